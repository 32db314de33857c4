#!/usr/bin/env bash
# Every worker of a TPU VM slice runs the same command; jax.distributed finds the pod.
# Needs the repo at ~/cnnjax on every worker and `pip install -e ~/cnnjax "jax[tpu]"`.
# Usage: TPU_NAME=my-tpu ZONE=us-central2-b launch/tpu_vm.sh --workdir=gs://bucket/run [flags ...]
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
printf -v args ' %q' "$@"
exec gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all \
  --command="cd ~/cnnjax && python -m experiments.main --config.distributed=True${args}"
