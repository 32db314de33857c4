#!/usr/bin/env bash
# Every local GPU of this machine (parallel=auto shards the batch over them).
# Needs a CUDA build of jax: pip install -U "jax[cuda12]"
# Usage: launch/gpu.sh [--config.dtype=bfloat16] [main.py flags ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cuda
# Let several runs share a GPU instead of each taking 75% of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
exec python -m experiments.main "$@"
