#!/usr/bin/env bash
# Builds the book (docs/, mdBook from crates.io) into target/book and checks it offline:
# every internal link and #anchor resolves, nothing loads from another host
# (tests/docs/linkcheck.py). The generated reference pages' staleness is a cargo test
# (tests/it/docs.rs).
#
# mdBook is installed once, with `cargo install`, into a cache of its own
# (~/.cache/trainyard/tools/mdbook-VERSION) unless an `mdbook` of that version is on PATH.
# Usage: tests/docs/book.sh [--install-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=0.4.52
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/trainyard/tools/mdbook-$VERSION"
MDBOOK=mdbook
if ! mdbook --version 2>/dev/null | grep -qx "mdbook v$VERSION"; then
  MDBOOK="$TOOLS/bin/mdbook"
  if [ ! -x "$MDBOOK" ]; then
    echo "installing mdbook $VERSION into $TOOLS" >&2
    # The HTML renderer and its search index only: no file watcher, no dev server.
    env -u CARGO_TARGET_DIR cargo install -q --locked --root "$TOOLS" --version "$VERSION" \
      --no-default-features --features search mdbook
  fi
fi
[ "${1:-}" = --install-only ] && exit 0
OUT="${CARGO_TARGET_DIR:-target}/book"
rm -rf "$OUT"
"$MDBOOK" build docs --dest-dir "$(realpath -m "$OUT")"
python3 tests/docs/linkcheck.py "$OUT"
