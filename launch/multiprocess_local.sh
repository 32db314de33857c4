#!/usr/bin/env bash
# N processes on 127.0.0.1 joined by jax.distributed (CPU, gloo collectives): the
# multi-host code path on one machine. Process 0 writes the workdir outputs.
# Usage: launch/multiprocess_local.sh N --workdir=DIR [main.py flags ...]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:?usage: launch/multiprocess_local.sh N [flags...]}"; shift
port="${JAX_COORDINATOR_PORT:-$(python -c 'import portpicker; print(portpicker.pick_unused_port())')}"
export JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}" JAX_NUM_PROCESSES="${n}"
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PROCESS_ID="${i}" python -m experiments.main --config.distributed=True "$@" &
  pids+=("$!")
done
# Ctrl-C or SIGTERM to this script reaches every process (each saves and stops).
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
# If one process fails, stop the others: they would otherwise wait in a
# collective until jax's heartbeat timeout. The first failure's exit code is
# the script's (143 for SIGTERM, 130 for Ctrl-C, 2 for bad input, 3 diverged).
status=0
for ((i = 0; i < n; i++)); do
  rc=0
  wait -n || rc=$?
  if ((rc != 0 && status == 0)); then
    status=${rc}
    kill "${pids[@]}" 2>/dev/null || true
  fi
done
exit "${status}"
