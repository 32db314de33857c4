"""Two JAX processes on 127.0.0.1 (CPU, gloo collectives) train like one.

`launch/multiprocess_local.sh 2` starts two `experiments.main` processes joined
by `jax.distributed`, one CPU device each, parallel="auto" (so "sharded" over
the 2 devices). Each reads only its half of every batch. The reference is the
same config trained by this (single) process on one device: the two-process
run must follow the same loss trajectory, and only process 0 may write the
run's files (process 1 takes part in the collective checkpoint only).
"""

import json
import os
import re
import subprocess

import numpy as np
import pytest

from cnnjax.training import loop
from experiments.configs import default as default_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
RTOL = 1e-5
# SGD with momentum rather than the recipe's AdamW: see tests/test_parallel.py
# for why Adam turns float32 reduction-order noise into visible differences.
OVERRIDES = {"num_train_steps": STEPS, "log_every_steps": 1, "progress": "none",
             "optimizer.name": "momentum", "optimizer.learning_rate": 0.05}


def max_rel_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


def read_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = f.read().splitlines()
  return [json.loads(line) for line in lines]  # a garbled line fails here


def files_outside_checkpoints(workdir):
  found = set()
  for root, dirs, files in os.walk(workdir):
    dirs[:] = [d for d in dirs if d != "checkpoints"]
    found.update(os.path.relpath(os.path.join(root, f), workdir) for f in files)
  # TensorBoard names its file after the time and host: compare them as a count.
  events = sorted(f for f in found if f.startswith("tensorboard/events.out.tfevents."))
  return (found - set(events)) | {f"tensorboard event file {i}" for i in range(len(events))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """One process, one device; also prepares the digits data before two processes read it."""
  c = default_config.get_config()
  c.data_dir = data_dir
  c.parallel = "none"
  for key, value in OVERRIDES.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  workdir = str(tmp_path_factory.mktemp("one-process"))
  loop.train_and_evaluate(c, workdir)
  return workdir


def test_two_processes_match_one(reference, tmp_path, data_dir):
  workdir = str(tmp_path / "two-processes")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  cmd = [os.path.join(REPO_ROOT, "launch", "multiprocess_local.sh"), "2",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}", *flags]
  result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]

  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["process_count"] == 2 and summary["parallel"] == "sharded"
  assert len(summary["devices"]) == 2

  ref, two = read_records(reference), read_records(workdir)
  # One writer: each record exactly once, in the same sequence as one process writes.
  assert [(r["split"], r["step"]) for r in two] == [(r["split"], r["step"]) for r in ref]
  ref_loss = [r["loss"] for r in ref if r["split"] == "train"]
  two_loss = [r["loss"] for r in two if r["split"] == "train"]
  assert len(two_loss) == STEPS
  print(f"2 processes vs 1: max relative train-loss difference over {STEPS} steps "
        f"{max_rel_diff(two_loss, ref_loss):.2e}")
  np.testing.assert_allclose(two_loss, ref_loss, rtol=RTOL)
  ref_test = [r for r in ref if r["split"] == "test"][0]
  two_test = [r for r in two if r["split"] == "test"][0]
  np.testing.assert_allclose(two_test["loss"], ref_test["loss"], rtol=RTOL)
  assert two_test["accuracy"] == ref_test["accuracy"]

  # Process 1 wrote nothing of its own: the same files as a one-process run,
  # one TensorBoard event file, and checkpoints only where orbax put them.
  assert files_outside_checkpoints(workdir) == files_outside_checkpoints(reference)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(
      os.listdir(os.path.join(reference, "checkpoints")))


def test_sigterm_to_one_process_stops_both_at_the_same_step(reference, tmp_path, data_dir):
  """A signal reaching one process only: both stop together at a sync point, checkpoint, 143.

  Without the agreement the signalled process would leave its peer waiting in
  the collective checkpoint save.
  """
  import signal
  import time
  workdir = str(tmp_path / "signalled")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [os.path.join(REPO_ROOT, "launch", "multiprocess_local.sh"), "2",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}",
         "--config.num_train_steps=100000", "--config.log_every_steps=5",
         "--config.progress=none"]
  # Its own process group, so that a failing test can stop the workers too.
  launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
  try:
    deadline = time.time() + 240
    while not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      assert time.time() < deadline and launcher.poll() is None, "training never started"
      time.sleep(0.5)
    pids = subprocess.run(["pgrep", "-f", "--", f"--workdir={workdir}"], capture_output=True,
                          text=True).stdout.split()
    workers = [p for p in pids if int(p) != launcher.pid and
               "python" in open(f"/proc/{p}/cmdline").read()]
    assert len(workers) == 2, workers
    os.kill(int(max(workers, key=int)), signal.SIGTERM)  # the second process only
    _, stderr = launcher.communicate(timeout=180)
  finally:
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
      launcher.wait()
  assert launcher.returncode == 143, stderr[-3000:]
  messages = re.findall(r"interrupted by SIGTERM at step \d+ of \d+", stderr)
  assert len(messages) == 2 and messages[0] == messages[1], messages  # same step on both
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["status"] == "interrupted"
  assert str(summary["steps"]) in os.listdir(os.path.join(workdir, "checkpoints"))
