#!/bin/sh
# The image build's first step: the datasets, checked before anything is compiled, so that
# a build that cannot succeed fails in seconds and says what to put where in the checkout.
#
#   MNIST          required: docker/data/mnist/, the four IDX files, raw or .gz
#   Fashion-MNIST  optional: docker/data/fashion-mnist/; without it the image builds and
#                  the server refuses fashion-mnist specs at submission (422)
#
# Every file found is checked against the SHA-256 of its uncompressed content (the sums
# are src/data/mnist.rs's; a test keeps SHA256SUMS beside this file equal to them). A
# missing MNIST file is downloaded from the dataset's mirrors unless OFFLINE is true.
#
# Usage: check.sh DATA_DIR OFFLINE     (in the Dockerfiles: check.sh /data "$DATA_OFFLINE")
set -eu
DATA=$1
OFFLINE=${2:-false}
HERE=$(dirname "$0")
SUMS=$HERE/SHA256SUMS
MNIST_MIRRORS="https://ossci-datasets.s3.amazonaws.com/mnist/ https://storage.googleapis.com/cvdf-datasets/mnist/"
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

fail() {
  cat >&2 <<EOF

trainyard image build: $1

Put the dataset's four IDX files (raw or .gz) in the checkout, then build again:
  docker/data/$2/{$(echo $FILES | tr ' ' ',')}[.gz]
Ways to fill it:
  - copy them from a machine that has them (trainyard fetch-data $2 --data-dir DIR
    downloads and verifies them; Debian's dataset-fashion-mnist package has Fashion-MNIST
    in /usr/share/datasets/fashion-mnist);
  - or build where the dataset's mirrors answer, without TRAINYARD_DATA_OFFLINE=true,
    and the build downloads what is missing.
See docker/data/README.md.
EOF
  exit 1
}

# The SHA-256 of a file's uncompressed content.
content_sum() {
  case $1 in
    *.gz) gzip -dc "$1" | sha256sum | cut -d' ' -f1 ;;
    *) sha256sum "$1" | cut -d' ' -f1 ;;
  esac
}

# The file of $1/$2 that is there (raw first), or nothing.
found() {
  if [ -f "$DATA/$1/$2" ]; then echo "$DATA/$1/$2"
  elif [ -f "$DATA/$1/$2.gz" ]; then echo "$DATA/$1/$2.gz"
  fi
}

verify() {
  want=$(grep " $1/$2\$" "$SUMS" | cut -d' ' -f1)
  got=$(content_sum "$3")
  [ "$want" = "$got" ] ||
    fail "docker/data/$1/$(basename "$3") is not $1's $2 (SHA-256 of its content $got, expected $want)" "$1"
}

download() {
  command -v curl >/dev/null 2>&1 ||
    fail "docker/data/$1/$2 (or $2.gz) is missing, and this build stage has no curl to download it" "$1"
  for m in $MNIST_MIRRORS; do
    echo "downloading $m$2.gz" >&2
    if curl -fsSL --connect-timeout 15 --max-time 300 -o "$DATA/$1/$2.gz.part" "$m$2.gz"; then
      mv "$DATA/$1/$2.gz.part" "$DATA/$1/$2.gz"
      return 0
    fi
  done
  rm -f "$DATA/$1/$2.gz.part"
  fail "docker/data/$1/$2 (or $2.gz) is missing, and no mirror answered" "$1"
}

mkdir -p "$DATA/mnist"
for f in $FILES; do
  path=$(found mnist "$f")
  if [ -z "$path" ]; then
    [ "$OFFLINE" = true ] &&
      fail "docker/data/mnist/$f (or $f.gz) is missing: MNIST is required, and TRAINYARD_DATA_OFFLINE=true forbids downloading it" mnist
    download mnist "$f"
    path=$(found mnist "$f")
  fi
  verify mnist "$f" "$path"
done
echo "mnist: 4 files, checksums verified" >&2

have=0
for f in $FILES; do [ -n "$(found fashion-mnist "$f")" ] && have=$((have + 1)); done
if [ $have = 4 ]; then
  for f in $FILES; do verify fashion-mnist "$f" "$(found fashion-mnist "$f")"; done
  echo "fashion-mnist: 4 files, checksums verified" >&2
elif [ $have = 0 ]; then
  rm -rf "$DATA/fashion-mnist"
  echo "fashion-mnist: not in docker/data/fashion-mnist (optional): the image will refuse fashion-mnist specs" >&2
else
  fail "docker/data/fashion-mnist holds $have of Fashion-MNIST's 4 files" fashion-mnist
fi
rm -f "$DATA/README.md" "$DATA/check.sh" "$DATA/SHA256SUMS"
