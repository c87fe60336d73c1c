#!/usr/bin/env bash
# Every Debian package the test suite needs and this machine lacks, in one apt-get
# transaction (one index update, one download) rather than one per step: PostgreSQL, the
# browser and its driver, promtool, Node.js, Fashion-MNIST, and the Docker engine with
# Compose and debootstrap for tests/compose.sh. A machine that has them all installs
# nothing and asks no mirror. tests/run.sh runs it in the background at its start.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have pg_ctlcluster || need+=(postgresql)
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)
have promtool || need+=(prometheus)
have node || need+=(nodejs)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
have dockerd || need+=(docker.io)
have docker-compose || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
have debootstrap || need+=(debootstrap)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} = 0 ]; then
  echo "every Debian package needed is installed"
  exit 0
fi
echo "installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
