#!/usr/bin/env bash
# The regression suite (tests/regression/cases.toml): every config in configs/ and examples/ and
# the feature layers on top of them, at small settings, must reproduce the committed digests in
# tests/regression/expected/ (metrics, traffic, accounting, the config written and the SHA-256
# of the final weights). CI runs it as part of `cargo test --workspace`.
# usage: scripts/regression.sh [--update] [CASE ...]
#   --update   rewrite the expected digests from this build (only on purpose: say why in the commit)
#   CASE ...   run only these cases
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --update ]]; then
  export BRAID_REGRESSION_UPDATE=1
  shift
fi
if [[ $# -gt 0 ]]; then
  BRAID_REGRESSION_ONLY=$(IFS=,; echo "$*")
  export BRAID_REGRESSION_ONLY
fi
cargo test --release -p braid --test regression -- --nocapture
