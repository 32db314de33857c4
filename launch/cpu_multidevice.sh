#!/usr/bin/env bash
# N fake CPU devices in one process: data-parallel code paths without accelerators.
# Usage: launch/cpu_multidevice.sh N [--config.parallel=pmap|sharded] [main.py flags ...]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: launch/cpu_multidevice.sh N [flags...]}"; shift
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=${n} ${XLA_FLAGS:-}"
exec python -m experiments.main "$@"
