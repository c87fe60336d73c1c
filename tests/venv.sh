#!/usr/bin/env bash
# A cached Python venv for a test tool from PyPI: creates DIR with PACKAGES unless it
# already imports MODULES, then prints DIR. tests/run.sh fills them all in the
# background at its start; each script that needs one calls this too, so it also runs
# alone.
#
# Usage: tests/venv.sh DIR MODULES PACKAGE...    (MODULES: "a, b.c", for `import`)
set -euo pipefail
DIR=$1 MODULES=$2
shift 2
if [ -x "$DIR/bin/python" ] && "$DIR/bin/python" -c "import $MODULES" 2>/dev/null; then
  echo "$DIR"
  exit 0
fi
echo "installing $* into $DIR" >&2
if ! python3 -c 'import ensurepip' 2>/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
rm -rf "$DIR"
mkdir -p "$(dirname "$DIR")"
python3 -m venv "$DIR"
"$DIR/bin/pip" install -q --disable-pip-version-check "$@" >&2
"$DIR/bin/python" -c "import $MODULES"
echo "$DIR"
