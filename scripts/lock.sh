#!/usr/bin/env bash
# Refresh constraints.txt, the lock that scripts/setup_env.sh installs from: resolve the newest versions
# pyproject.toml allows into a throw-away environment, run the whole test suite there, and only if it
# passes write the exact versions. Run it when you want newer dependencies (`make lock`), then commit
# constraints.txt with the test result. Usage: bash scripts/lock.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK_VENV=${LOCK_VENV:-.venv-lock}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

rm -rf "$LOCK_VENV"
echo "[lock] resolving the newest versions pyproject.toml allows into $LOCK_VENV"
VENV="$LOCK_VENV" LTXDIST_UNLOCKED=1 TORCH_VERSION="$TORCH_VERSION" bash scripts/setup_env.sh

echo "[lock] running the test suite against that resolution"
# The suite finds its interpreter through sys.executable, so subprocess tests use $LOCK_VENV too.
"$LOCK_VENV/bin/python" -m pytest -q -n 2 --dist loadfile "$@"

py_version=$("$LOCK_VENV/bin/python" -c "import platform; print(platform.python_version())")
tmp=$(mktemp constraints.txt.tmp-XXXXXX)
{
  echo "# Exact versions the test suite last passed with; scripts/setup_env.sh installs from this file."
  echo "# Written by \`make lock\` (scripts/lock.sh) on $(date -u +%Y-%m-%d), CPython $py_version, $(uname -m) Linux."
  echo "# torch is pinned without its local label (+cpu / +cu...) so one file serves CPU and CUDA machines."
  # ltxdist itself is the editable install; torch's local build label is dropped (see above).
  "$LOCK_VENV/bin/python" -m pip list --format=freeze --exclude-editable \
    | grep -v -i -E '^(ltxdist|pip)==' | sed -E 's/^(torch==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > "$tmp"
mv "$tmp" constraints.txt
rm -rf "$LOCK_VENV"
echo "[lock] wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages); commit it"
