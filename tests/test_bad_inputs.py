"""Bad input fails fast: one line on stderr naming the key, exit code 2, no traceback.

Each case runs the real entrypoint (``experiments/main.py`` as ``__main__``, with
its own argv) in a forked child of one driver process that has already imported
jax/optax/flax, so 30 cases cost one start-up instead of 30. The child's exit
status and stderr are exactly what a shell would see. One case runs as a plain
subprocess to check that validation happens before the data, checkpoint and
plotting libraries are imported. Every case points at the same finished-looking
workdir, whose files must be byte-for-byte unchanged afterwards.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (case id, extra argv, substrings the one error line must contain)
CASES = [
    ("unknown_dataset", ["--config.dataset=imagenet"], ["dataset='imagenet'", "digits"]),
    ("unknown_model", ["--config.model=resnet999"], ["model='resnet999'", "bn_cnn"]),
    ("unknown_loss", ["--config.loss.name=crossentropyy"], ["crossentropyy", "valid names"]),
    ("unknown_optimizer", ["--config.optimizer.name=adamm"], ["adamm", "adam"]),
    ("unknown_schedule", ["--config.optimizer.schedule=triangle"], ["triangle", "cosine"]),
    ("unknown_key", ["--config.learning_rate=0.1"], ["learning_rate", "cnnjax/config.py"]),
    ("unknown_nested_key", ["--config.optimizer.lr=0.1"], ["'lr'", "cnnjax/config.py"]),
    ("misspelt_key", ["--config.modle=bn_cnn"], ["'modle'", "did you mean 'model'"]),
    ("lr_negative", ["--config.optimizer.learning_rate=-0.1"], ["learning_rate=-0.1", "> 0"]),
    ("lr_zero", ["--config.optimizer.learning_rate=0.0"], ["learning_rate=0.0", "> 0"]),
    ("batch_size_zero", ["--config.batch_size=0"], ["batch_size=0", "> 0"]),
    ("batch_size_negative", ["--config.batch_size=-32"], ["batch_size=-32", "> 0"]),
    ("batch_size_not_int", ["--config.batch_size=abc"], ["batch_size=abc", "int"]),
    ("eval_batch_size_zero", ["--config.eval_batch_size=0"], ["eval_batch_size=0", "> 0"]),
    ("dropout_one", ["--config.dropout_rate=1.0"], ["dropout_rate=1.0", "[0, 1)"]),
    ("dropout_negative", ["--config.dropout_rate=-0.2"], ["dropout_rate=-0.2", "[0, 1)"]),
    ("validation_fraction_one", ["--config.validation_fraction=1.0"],
     ["validation_fraction=1.0", "[0, 1)"]),
    ("validation_fraction_above_one", ["--config.validation_fraction=1.5"],
     ["validation_fraction=1.5", "[0, 1)"]),
    ("nothing_to_train", ["--config.num_epochs=0", "--config.num_train_steps=0"],
     ["num_epochs=0", "num_train_steps=0"]),
    ("negative_steps", ["--config.num_train_steps=-5"], ["num_train_steps=-5", ">= 0"]),
    ("binary_loss_on_10_classes", ["--config.loss.name=binary_cross_entropy"],
     ["binary_cross_entropy", "10"]),
    ("hinge_on_10_classes", ["--config.loss.name=hinge"], ["hinge", "10"]),
    ("non_classification_loss", ["--config.loss.name=contrastive"], ["contrastive"]),
    ("unknown_loss_option", ["--config.loss.margin=2.0"],
     ["loss.margin", "sparse_categorical_cross_entropy", "accepted: [class_weights"]),
    ("option_of_another_loss", ["--config.loss.name=focal", "--config.loss.margin=2.0"],
     ["loss.margin is not an option of focal", "accepted: [alpha, gamma, label_smoothing]"]),
    ("unknown_task", ["--config.task=detection"], ["task='detection'", "classification"]),
    ("classification_loss_for_segmentation",
     ["--config.task=segmentation", "--config.dataset=digit_scenes", "--config.model=fcn",
      "--config.augment.crop_padding=0", "--config.loss.name=binary_cross_entropy"],
     ["binary_cross_entropy", "segmentation", "[dice, dice_cross_entropy, focal"]),
    ("vector_model_for_segmentation",
     ["--config.task=segmentation", "--config.dataset=digit_scenes"],
     ["model='bn_cnn'", "per-pixel", "'unet_small'"]),
    ("task_on_a_dataset_without_its_fields", ["--config.task=localization"],
     ["task='localization'", "['box']", "digit_scenes_single"]),
    ("augmentation_for_a_scene_task",
     ["--config.task=sequence", "--config.dataset=digit_scenes", "--config.model=seq_reader",
      "--config.loss.name=sequence_cross_entropy", "--config.augment.crop_padding=1"],
     ["augment.crop_padding=1", "task='sequence'"]),
    ("label_smoothing_out_of_range", ["--config.loss.label_smoothing=1.5"],
     ["label_smoothing", "1.5"]),
    ("on_nonfinite_unknown", ["--config.on_nonfinite=ignore"], ["on_nonfinite='ignore'", "stop"]),
    ("rollback_factor_one", ["--config.rollback_lr_factor=1.0"],
     ["rollback_lr_factor=1.0", "(0, 1)"]),
    ("keep_checkpoints_zero", ["--config.keep_checkpoints=0"], ["keep_checkpoints=0", "> 0"]),
    ("dtype_unknown", ["--config.dtype=float16"], ["dtype='float16'", "bfloat16"]),
    ("parallel_unknown", ["--config.parallel=gpus"], ["parallel='gpus'", "pmap"]),
    ("progress_unknown", ["--config.progress=fancy"], ["progress='fancy'", "bar"]),
    ("augment_scale", ["--config.augment.scale=1.0"], ["augment.scale=1.0", "[0, 1)"]),
    ("stray_argument", ["train"], ["unexpected arguments", "train"]),
    ("workdir_is_a_file", ["WORKDIR_FILE"], ["is a file", "directory"]),
    ("workdir_under_a_file", ["WORKDIR_UNDER_FILE"], ["cannot be created", "not a directory"]),
    ("workdir_in_proc", ["--workdir=/proc/cnnjax-run"], ["/proc/cnnjax-run", "cannot be created"]),
    ("config_file_missing", ["CONFIG=missing.py"], ["missing.py", "no such file"]),
    ("config_file_syntax_error", ["CONFIG=syntax.py"], ["syntax.py", "SyntaxError", "line 2"]),
    ("config_file_raises", ["CONFIG=raises.py"],
     ["raises.py", "get_config() raised RuntimeError", "no recipe here"]),
    ("config_file_without_get_config", ["CONFIG=empty.py"], ["empty.py", "get_config"]),
]

# The broken config files of the CONFIG= cases.
_CONFIG_FILES = {
    "syntax.py": "def get_config():\n  return (\n",
    "raises.py": "def get_config():\n  raise RuntimeError('no recipe here')\n",
    "empty.py": "VALUE = 1\n",
}

# Forks one child per case after the expensive imports; the child runs the
# entrypoint exactly as `python -m experiments.main ARGS` would.
_DRIVER = textwrap.dedent("""
    import json, os, runpy, sys, time, traceback
    import jax, optax, flax.linen, ml_collections, absl.flags  # shared, imported once
    cases = json.loads(sys.argv[1])
    out_dir = sys.argv[2]
    results = {}
    for name, argv in cases:
      err_path = os.path.join(out_dir, name + ".err")
      t0 = time.perf_counter()
      pid = os.fork()
      if pid == 0:
        fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        os.dup2(fd, 1)
        sys.argv = ["experiments/main.py", *argv]
        code = 0
        try:
          runpy.run_module("experiments.main", run_name="__main__", alter_sys=True)
        except SystemExit as e:
          code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
          traceback.print_exc()
          code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
      _, status = os.waitpid(pid, 0)
      results[name] = {"rc": os.waitstatus_to_exitcode(status),
                       "seconds": time.perf_counter() - t0}
    print(json.dumps(results))
""")


def _hash_tree(root):
  digest = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, root)] = (hashlib.sha256(f.read()).hexdigest(),
                                               os.path.getmtime(path))
  return digest


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir that looks like a finished run: every case must leave it untouched."""
  d = tmp_path_factory.mktemp("existing_run")
  from experiments.configs import default
  (d / "config.json").write_text(default.get_config().to_json_best_effort())
  (d / "summary.json").write_text(json.dumps({"status": "completed", "test_accuracy": 0.99}))
  (d / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 2.3}\n')
  (d / "checkpoints" / "40").mkdir(parents=True)
  (d / "checkpoints" / "40" / "state").write_bytes(b"\x00\x01checkpoint bytes")
  return str(d)


@pytest.fixture(scope="module")
def results(workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("bad_input_stderr")
  blocker = out / "a_file"
  blocker.write_text("not a directory")
  for filename, text in _CONFIG_FILES.items():
    (out / filename).write_text(text)
  cases = []
  for name, argv, _ in CASES:
    if argv == ["WORKDIR_FILE"]:
      cases.append((name, [f"--workdir={blocker}"]))
    elif argv == ["WORKDIR_UNDER_FILE"]:
      cases.append((name, [f"--workdir={blocker}/run"]))
    elif argv[0].startswith("CONFIG="):
      cases.append((name, [f"--workdir={workdir}", f"--config={out / argv[0][7:]}"]))
    elif argv[0].startswith("--workdir="):
      cases.append((name, argv))
    else:
      cases.append((name, [f"--workdir={workdir}", *argv]))
  before = _hash_tree(workdir)
  r = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(cases), str(out)],
                     cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  after = _hash_tree(workdir)
  codes = json.loads(r.stdout.strip().splitlines()[-1])
  stderr = {name: (out / f"{name}.err").read_text() for name, _ in cases}
  return codes, stderr, before, after


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(results, name, argv, expected):
  codes, stderr, _, _ = results
  text = stderr[name]
  assert codes[name]["rc"] == 2, text
  assert "Traceback" not in text
  lines = [x for x in text.splitlines() if x.strip()]
  assert len(lines) == 1, text
  assert lines[0].startswith("error: ")
  for piece in expected:
    assert piece in lines[0], (piece, lines[0])


def test_existing_workdir_is_untouched(results):
  _, _, before, after = results
  assert before and after == before


def test_bad_input_fails_before_heavy_imports_and_compilation(workdir):
  """A plain subprocess: the error comes before tfds, grain, orbax or matplotlib load."""
  probe = textwrap.dedent("""
      import atexit, runpy, sys
      heavy = ("tensorflow_datasets", "grain", "orbax.checkpoint", "matplotlib", "tensorboardX",
               "torch")
      atexit.register(lambda: print("LOADED", [m for m in heavy if m in sys.modules],
                                    file=sys.stderr))
      sys.argv = ["experiments/main.py", *sys.argv[1:]]
      runpy.run_module("experiments.main", run_name="__main__", alter_sys=True)
  """)
  t0 = time.perf_counter()
  r = subprocess.run([sys.executable, "-c", probe, f"--workdir={workdir}",
                      "--config.optimizer.learning_rate=-1"], cwd=REPO_ROOT, env=_env(),
                     capture_output=True, text=True, timeout=120)
  seconds = time.perf_counter() - t0
  assert r.returncode == 2, r.stderr
  assert "LOADED []" in r.stderr, r.stderr
  # Mostly the jax import; a compile of the model alone takes longer than this.
  assert seconds < 60, seconds
  print(f"bad input failed after {seconds:.1f} s")


def test_verbose_shows_the_traceback(workdir):
  r = subprocess.run([sys.executable, "-m", "experiments.main", f"--workdir={workdir}",
                      "--config.batch_size=0", "--verbose"], cwd=REPO_ROOT, env=_env(),
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert "Traceback (most recent call last)" in r.stderr
  assert r.stderr.strip().splitlines()[-1] == (
      "error: batch_size=0 is invalid; expected an integer > 0")
