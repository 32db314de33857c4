#!/usr/bin/env bash
# One process, the machine's default device (CPU, or one GPU if jax sees one).
# Usage: launch/local.sh [--config=experiments/configs/NAME.py] [--workdir=DIR] [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m experiments.main "$@"
