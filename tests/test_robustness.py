"""A run is never lost: kill -9, SIGTERM, Ctrl-C, a corrupt checkpoint, divergence.

Every test drives the real entrypoint (``python -m experiments.main``) in a
subprocess on the embedded digits data and compares what it leaves on disk.
The reference for "exactly the same result" is an uninterrupted run of the same
command in this session: on CPU the resumed run must reproduce its per-epoch
history, test accuracy/loss and best validation accuracy bit for bit (the
float values are compared with ``==`` after the JSON round trip, which is exact
for Python floats).

Digits with validation_fraction 0.1 and batch 32 has 40 steps per epoch, so the
100-step runs below close epochs at steps 40 and 80, end inside the third, and
hold mid-epoch checkpoints (every 15 steps) whose running epoch sums must
survive a restart.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = 100
STEPS_PER_EPOCH = 40
COMMON = [
    f"--config.num_train_steps={STEPS}",
    "--config.checkpoint_every_steps=15",
    "--config.log_every_steps=5",
    "--config.progress=none",
    "--config.parallel=none",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Subprocess environment: one CPU device and a shared persistent compilation cache.

  The cache only saves recompiling the same train step in every subprocess; a
  cached executable is the one a fresh compile would produce.
  """
  e = dict(os.environ)
  e.pop("XLA_FLAGS", None)
  e.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
           JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return e


def command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "experiments.main", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", *COMMON, *extra]


def run(workdir, data_dir, env, *extra, timeout=300):
  return subprocess.run(command(workdir, data_dir, *extra), cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def start(workdir, data_dir, env, *extra):
  return subprocess.Popen(command(workdir, data_dir, *extra), cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def committed_steps(workdir):
  """Checkpoint steps orbax has committed (its temporary directories have other names)."""
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def wait_for_checkpoint(proc, workdir, at_least, timeout=240):
  """Blocks until a committed checkpoint >= ``at_least`` exists while ``proc`` still runs."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      out, err = proc.communicate()
      pytest.fail(f"run ended (rc={proc.returncode}) before checkpoint {at_least}:\n{err[-3000:]}")
    steps = committed_steps(workdir)
    if steps and steps[-1] >= at_least:
      return steps[-1]
    time.sleep(0.02)
  proc.kill()
  pytest.fail(f"no checkpoint >= {at_least} within {timeout} s")


def summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def assert_same_result(got, want):
  assert got["status"] == "completed"
  assert got["steps"] == want["steps"] == STEPS
  assert got["history"] == want["history"]
  assert got["test_accuracy"] == want["test_accuracy"]
  assert got["test_loss"] == want["test_loss"]
  assert got["best_val_accuracy"] == want["best_val_accuracy"]
  assert got["best_epoch"] == want["best_epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, env):
  """An uninterrupted run; also prepares the digits data for the other runs."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  r = run(workdir, data_dir, env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resuming" not in r.stderr
  return workdir, summary(workdir)


def test_reference_run_checkpoints_and_manifest(reference):
  workdir, s = reference
  assert s["status"] == "completed" and [r["step"] for r in s["history"]] == [40, 80, 100]
  # keep_checkpoints=2: the last two saved (periodic 90, final 100), plus the
  # best by validation accuracy: the epoch the summary names (the earliest on a tie).
  steps = committed_steps(workdir)
  best_step = s["history"][s["best_epoch"] - 1]["step"]
  assert s["history"][s["best_epoch"] - 1]["val_accuracy"] == s["best_val_accuracy"]
  assert all(r["val_accuracy"] < s["best_val_accuracy"] for r in s["history"][:s["best_epoch"] - 1])
  assert {90, STEPS, best_step} <= set(steps) and len(steps) <= 3, (steps, best_step)
  with open(os.path.join(workdir, "manifest.json")) as f:
    manifest = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    assert manifest["config"] == json.load(f)
  assert manifest["config"]["num_train_steps"] == STEPS
  assert manifest["seed"] == 0
  assert manifest["packages"]["jax"] and manifest["packages"]["flax"]
  assert manifest["devices"] and manifest["backend"] == "cpu"
  assert "XLA_FLAGS" in manifest
  assert "git_commit" in manifest and "version" in manifest
  # The formulation "auto" trained with; a CPU without the native kernels says why.
  assert manifest["fast_ops"]["auto"] in ("native", "hybrid")
  assert (manifest["fast_ops"]["auto"] == "native") == ("native_unavailable" not in
                                                         manifest["fast_ops"])


def test_rerun_of_finished_run_reprints_and_recomputes_nothing(reference, data_dir, env):
  workdir, s = reference
  before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in ("summary.json",
                                                                    "metrics.jsonl")}
  r = run(workdir, data_dir, env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "already holds a completed run" in r.stdout
  assert f"{s['test_accuracy']:.4f}" in r.stdout
  assert {p: os.path.getmtime(os.path.join(workdir, p)) for p in before} == before


def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted(reference, tmp_path, data_dir, env):
  workdir = str(tmp_path / "killed")
  proc = start(workdir, data_dir, env)
  # 45 is the first checkpoint inside an epoch after one epoch has closed.
  wait_for_checkpoint(proc, workdir, 45)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  last = committed_steps(workdir)[-1]
  print(f"killed with SIGKILL; latest committed checkpoint: step {last}")

  r = run(workdir, data_dir, env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resuming from step {last} of {STEPS}" in r.stderr
  assert_same_result(summary(workdir), reference[1])
  # metrics.jsonl holds each logged step once, as the uninterrupted run does.
  records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  ref_records = [json.loads(x) for x in open(os.path.join(reference[0], "metrics.jsonl"))]
  key = lambda r: (r["step"], r["split"])
  assert [key(r) for r in records] == [key(r) for r in ref_records]
  for got, want in zip(records, ref_records):
    assert got.get("loss") == want.get("loss"), got


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory, data_dir, env, reference):
  workdir = str(tmp_path_factory.mktemp("sigterm"))
  proc = start(workdir, data_dir, env)
  wait_for_checkpoint(proc, workdir, 30)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  # Kept before any rerun, for the corrupt-checkpoint test.
  pristine = workdir + "-pristine"
  shutil.copytree(workdir, pristine)
  return workdir, pristine, proc.returncode, err


def test_sigterm_saves_checkpoint_and_exits_143(sigterm_run):
  workdir, _, rc, err = sigterm_run
  assert rc == 143, err[-3000:]
  assert "Traceback" not in err
  lines = [x for x in err.splitlines() if x.startswith("interrupted by SIGTERM at step")]
  assert len(lines) == 1, err[-3000:]
  step = int(lines[0].split("at step ")[1].split()[0])
  s = summary(workdir)
  assert s["status"] == "interrupted" and s["steps"] == step
  assert step in committed_steps(workdir)


def test_rerun_after_sigterm_equals_uninterrupted(sigterm_run, reference, data_dir, env):
  workdir, _, _, _ = sigterm_run
  step = summary(workdir)["steps"]
  r = run(workdir, data_dir, env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resuming from step {step} of {STEPS}" in r.stderr
  assert_same_result(summary(workdir), reference[1])


def test_corrupt_latest_checkpoint_is_skipped(sigterm_run, reference, tmp_path, data_dir, env):
  workdir = str(tmp_path / "corrupt")
  shutil.copytree(sigterm_run[1], workdir)
  steps = committed_steps(workdir)
  assert len(steps) >= 2, steps
  latest = os.path.join(workdir, "checkpoints", str(steps[-1]))
  # A partial write: every array data file of the latest checkpoint cut in half.
  cut = 0
  for root, _, files in os.walk(os.path.join(latest, "state")):
    for name in files:
      path = os.path.join(root, name)
      if os.sep + "d" + os.sep in path:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
          f.truncate(size // 2)
        cut += 1
  assert cut > 0
  r = run(workdir, data_dir, env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"warning: checkpoint {latest} is unreadable" in r.stderr
  assert f"resuming from step {steps[-2]} of {STEPS}" in r.stderr
  # Set aside for inspection, not deleted.
  assert os.listdir(os.path.join(workdir, "checkpoints.unreadable"))
  assert_same_result(summary(workdir), reference[1])


def test_sigint_exits_130_with_checkpoint(tmp_path, data_dir, env, reference):
  workdir = str(tmp_path / "sigint")
  proc = start(workdir, data_dir, env)
  wait_for_checkpoint(proc, workdir, 15)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err
  assert "interrupted by SIGINT at step" in err
  s = summary(workdir)
  assert s["status"] == "interrupted"
  assert s["steps"] in committed_steps(workdir)


@pytest.mark.parametrize("stage", ["loading digits", "compiling the train and eval steps"])
def test_signal_during_startup_ends_the_run_cleanly(stage, tmp_path, data_dir, env, reference):
  """Ctrl-C while the run starts up: one clean stop at the next safe point, nothing saved."""
  workdir = str(tmp_path / "startup")
  proc = start(workdir, data_dir, env, "--config.progress=log")
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if line.startswith(stage):
      proc.send_signal(signal.SIGINT)
      break
  out, err = proc.communicate(timeout=120)
  err = "".join(seen) + err
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and "Exception ignored" not in err
  final = [x for x in err.splitlines() if x.startswith("interrupted by SIGINT")]
  assert final == ["interrupted by SIGINT before training started; nothing was saved, rerun the "
                   "same command to start again"], err
  assert "checkpoint saved" not in err and "step 1/" not in err
  # Nothing is created before compilation has succeeded: the same command starts afresh.
  assert not os.path.exists(workdir) or os.listdir(workdir) == [], os.listdir(workdir)


def test_different_config_in_same_workdir_is_refused(reference, data_dir, env):
  workdir, _ = reference
  r = run(workdir, data_dir, env, "--config.optimizer.learning_rate=0.01", "--config.seed=3")
  assert r.returncode == 2
  assert "Traceback" not in r.stderr
  line = r.stderr.strip().splitlines()[-1]
  assert "optimizer.learning_rate (0.003 -> 0.01)" in line and "seed (0 -> 3)" in line
  assert "--allow_config_change" in line


# --- Divergence -------------------------------------------------------------
# Plain SGD at learning rate 1e30 on the digits BatchNorm CNN: the first update
# (from finite initial gradients) makes the weights ~1e30, and the step-2 loss
# overflows float32. A rate of 1e6 does NOT diverge here (measured: SGD's loss
# jumps to ~1e12 and settles near 3e5 with dead ReLUs; Adam's ~lr*sign(g) step
# is renormalised by BatchNorm), so it would not test the policies.
DIVERGE = ["--config.optimizer.name=sgd", "--config.optimizer.learning_rate=1e30",
           "--config.optimizer.schedule=constant", "--config.optimizer.momentum=0.0",
           "--config.optimizer.weight_decay=0.0", "--config.num_train_steps=30"]
POLICIES = {
    "stop": [],
    "skip": ["--config.on_nonfinite=skip", "--config.max_consecutive_nonfinite=4"],
    # Factor 1e-31: one rollback brings the rate from 1e30 to 0.1, which trains.
    "rollback": ["--config.on_nonfinite=rollback", "--config.rollback_lr_factor=1e-31"],
}


@pytest.fixture(scope="module")
def diverged(tmp_path_factory, data_dir, env, reference):
  """The three policies' runs, started together (each is mostly single-threaded start-up)."""
  root = tmp_path_factory.mktemp("diverge")
  procs = {p: start(str(root / p), data_dir, env, *DIVERGE, *extra)
           for p, extra in POLICIES.items()}
  out = {}
  for policy, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    out[policy] = (str(root / policy), proc.returncode, err)
  return out


def _events(workdir):
  return [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl")) if '"event"' in x]


def test_divergence_stop(diverged):
  workdir, rc, err = diverged["stop"]
  assert rc == 3, err[-3000:]
  assert "Traceback" not in err
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: training diverged: the loss became non-finite at step 2"), line
  assert line.endswith("no checkpoint was saved before it"), line
  s = summary(workdir)
  assert s["status"] == "diverged"
  assert s["steps"] == s["diverged_step"] == 2  # the step reached, not the steps dispatched
  first = [e for e in s["events"] if e["event"] == "nonfinite"]
  assert first == [{"event": "nonfinite", "step": 2, "metric": "loss", "policy": "stop"}]
  assert [e["step"] for e in _events(workdir)] == [2]
  assert committed_steps(workdir) == []  # nothing after step 1 was good enough to keep


def test_divergence_skip_counts_and_stops(diverged):
  workdir, rc, err = diverged["skip"]
  assert rc == 3, err[-3000:]
  line = err.strip().splitlines()[-1]
  assert "non-finite for 5 consecutive steps" in line and "on_nonfinite='skip'" in line, line
  s = summary(workdir)
  assert s["status"] == "diverged"
  skipped = [e for e in s["events"] if e["event"] == "nonfinite"]
  # Steps 2..5 skipped and counted; the 5th consecutive one (step 6) stops the run.
  assert [e["step"] for e in skipped] == [2, 3, 4, 5]
  assert all(e["policy"] == "skip" for e in skipped)
  assert s["skipped_steps"] == 4 and s["steps"] == s["diverged_step"] == 6
  assert [e["step"] for e in _events(workdir)] == [2, 3, 4, 5]


def test_divergence_rollback_recovers_with_smaller_lr(diverged):
  workdir, rc, err = diverged["rollback"]
  assert rc == 0, err[-3000:]
  s = summary(workdir)
  assert s["status"] == "completed" and s["steps"] == 30
  nonfinite = [e for e in s["events"] if e["event"] == "nonfinite"]
  assert nonfinite == [{"event": "nonfinite", "step": 2, "metric": "loss", "policy": "rollback"}]
  rollback = [e for e in _events(workdir) if e["event"] == "rollback"]
  assert len(rollback) == 1 and rollback[0]["lr_scale"] == pytest.approx(1e-31)
  assert rollback[0]["step"] == 0  # no checkpoint before step 2: back to the initial state
  records = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [x for x in records if x["split"] == "train" and "event" not in x]
  # Constant schedule: after the rollback every update uses 1e30 * 1e-31 = 0.1.
  assert train[-1]["learning_rate"] == pytest.approx(0.1, rel=1e-5)
  assert s["test_accuracy"] > 0.5  # it learned after the rollback (chance is 0.1)
