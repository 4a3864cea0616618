#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that reaches no network and has no
# Rust toolchain (the device machine some sessions are lent), into .gpu/ (ignored by git), small
# enough to travel with the working tree (its limit is 64 MiB in all; this is about 45 MiB):
#   .gpu/braid.xz         braid built here (release, `gpu` feature), stripped, xz-compressed
#   .gpu/fashion.tar.xz   Fashion-MNIST's four IDX files (Debian's dataset-fashion-mnist)
#   .gpu/deb/*.deb        the Vulkan loader and GL dispatch libraries (Debian), for a machine
#                         whose driver ships no loader
# Then, on that machine (carry [".gpu"]), one command: scripts/gpu-remote.sh [OUT].
#
# usage: scripts/gpu-pack.sh    env: FASHION_DIR (/usr/share/datasets/fashion-mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
FASHION_DIR=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
need() { echo "gpu-pack: $*" >&2; exit 2; }
for tool in cargo strip xz tar apt-get; do
  command -v $tool > /dev/null || need "$tool is missing"
done
[[ -e $FASHION_DIR/train-images-idx3-ubyte.gz ]] ||
  need "no Fashion-MNIST in $FASHION_DIR (apt-get install dataset-fashion-mnist, or set FASHION_DIR)"
rm -rf .gpu && mkdir -p .gpu/deb
target=${CARGO_TARGET_DIR:-target}
cargo build --release -p braid >&2
strip -o .gpu/braid "$target/release/braid"
xz -T0 -6 .gpu/braid
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in "$FASHION_DIR"/*-ubyte.gz; do gunzip -c "$f" > "$tmp/$(basename "$f" .gz)"; done
tar -C "$tmp" -cf - . | xz -T0 -9 > .gpu/fashion.tar.xz
# The loader packages as the device notes say: amd64, downloaded, not installed.
lists=$(mktemp -d)
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
mkdir -p "$lists/partial"
apt-get "${o[@]}" update -q >&2
(cd .gpu/deb && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >&2)
rm -rf "$lists"
du -sh .gpu .gpu/* >&2
