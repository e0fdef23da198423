"""Gas of the SortitionTree library (contracts/src/SortitionTree.sol) per operation, by tree size,
on a fresh Anvil, through the test harness (tests/contracts/SortitionHarness.sol).

    python bench/sortition.py [--sizes 16,256,4096]

Gas is deterministic for a given tree; the trees are filled with weights 1 … weightCap (keccak of
the index). The library's own gas is measured with gasleft() around one call, its slots cold as in
a transaction of its own; "set tx" is the whole steady set transaction (21,000 base, calldata, the
harness). A draw reads one node slot per level plus the header and the drawn owner; a set reads and
writes one node per level and copies it to before[] on its first change in a block
(tests/sortition_model.py's GasRow says what each column measures).

    RESULT sortition_draw_gas_N=G        a draw in a tree of N members (the most over 32 seeds)
    RESULT sortition_draw_same_block_gas_N=G   its path changed earlier in the block (before[] read)
    RESULT sortition_set_gas_N=G         an existing member's new weight, steady state
    RESULT sortition_set_first_gas_N=G   the same where before[] slots were never written
    RESULT sortition_add_gas_N=G, sortition_remove_gas_N=G
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshmarket.mesh.anvil import start_anvil  # noqa: E402
from meshmarket.mesh.chain import connect  # noqa: E402
from meshmarket.mesh.keys import dev_account  # noqa: E402
from tests.sortition_model import GasRow, Harness, gas_by_size  # noqa: E402

COLUMNS = {"draw": "draw", "draw_same_block": "draw, same block", "set_steady": "set", "set_first": "set, first",
           "set_tx": "set tx", "add": "add (+level)", "remove": "remove"}
RESULTS = {"draw": "draw", "draw_same_block": "draw_same_block", "set_steady": "set", "set_first": "set_first",
           "add": "add", "remove": "remove"}


def measure(sizes: list[int]) -> list[GasRow]:
    node = start_anvil()
    try:
        h = Harness(connect(node.url), dev_account(0))
        return [gas_by_size(h, tree, n) for tree, n in enumerate(sizes, start=1)]
    finally:
        node.stop()


def table(rows: list[GasRow]) -> str:
    head = f"{'members':>8} {'levels':>6} " + " ".join(f"{label:>16}" for label in COLUMNS.values())
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.members:>8,} {r.levels:>6} " + " ".join(f"{getattr(r, k):>16,}" for k in COLUMNS))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,256,4096", help="tree sizes, comma-separated")
    args = ap.parse_args(argv)
    rows = measure([int(x) for x in args.sizes.split(",")])
    print(table(rows))
    for r in rows:
        for key, name in RESULTS.items():
            print(f"RESULT sortition_{name}_gas_{r.members}={getattr(r, key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
