"""`mesh`, the command line: the top floor of Meshmarket.

One click module per command group (`cli/<group>.py`), the root group in `cli/main.py`, and the
local market launcher (`cli/devnet.py`) that `mesh demo` and `mesh devnet` run on (the tests and
benchmarks start it through tests/devnet.py). This package is the only one that knows every other
one; nothing imports it but the tests and benchmarks. It holds no business rules:
each command parses its options, calls the library (provider/, consumer/, ledger/, contracts/, mesh/)
and prints. Library errors (mesh.errors.MeshError) become one line and exit code 1 here, never a
traceback.
"""
