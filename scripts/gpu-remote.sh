#!/usr/bin/env bash
# On a GPU machine with what scripts/gpu-pack.sh packed in .gpu/: unpacks braid and
# Fashion-MNIST into /tmp/braid-gpu, installs the Vulkan loader from .gpu/deb where the machine
# has none, points the loader at NVIDIA's driver where it is in the usual place, and runs
# scripts/gpu-check.sh on the full reference job. Writes OUT/gpu-check.json (default
# $OUT/gpu-check, or runs/gpu-check). Other gpu-check.sh settings pass through the environment
# (ROUNDS, STEPS, DEVICE, SET).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-${OUT:+$OUT/gpu-check}}
dest=${dest:-runs/gpu-check}
need() { echo "gpu-remote: $*" >&2; exit 2; }
[[ -e .gpu/braid.xz && -e .gpu/fashion.tar.xz ]] || need "no .gpu/braid.xz or .gpu/fashion.tar.xz: run scripts/gpu-pack.sh where cargo is, and carry .gpu"
if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  compgen -G ".gpu/deb/*.deb" > /dev/null || need "no Vulkan loader here and none in .gpu/deb"
  for f in .gpu/deb/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [[ -z ${VK_DRIVER_FILES:-} && -e $nvidia_icd ]]; then
  export VK_DRIVER_FILES=$nvidia_icd
fi
work=/tmp/braid-gpu
rm -rf "$work" && mkdir -p "$work/fashion"
xz -dc .gpu/braid.xz > "$work/braid"
chmod +x "$work/braid"
tar -C "$work/fashion" -xJf .gpu/fashion.tar.xz
BRAID="$work/braid" FASHION="$work/fashion" scripts/gpu-check.sh "$dest"
