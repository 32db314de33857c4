"""Test-wide setup: 8 fake CPU devices, so multi-device code runs in every test run.

Tests that mean a single device say so with ``parallel="none"``.
"""

import os
import tempfile

# Must happen before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

from cnnjax import cpu_runtime  # noqa: E402

# What every cnnjax entry point (experiments/cli.py) does before JAX's first computation.
cpu_runtime.configure()

jax.config.update("jax_num_cpu_devices", 8)

# One persistent compilation cache per test run, shared by every test, subprocess
# and xdist worker of that run: many tests compile the same train step, and a
# cached executable is exactly the one a fresh compile would produce. A new
# directory each run, so nothing carries over between runs.
if "CNNJAX_TEST_COMPILATION_CACHE" not in os.environ:
  os.environ["CNNJAX_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="cnnjax-jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["CNNJAX_TEST_COMPILATION_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import struct  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The quick tier (the default `pytest`, CI) runs every test function, but of these
# parametrized ones only their first cases; the others, and the tests in
# `EXHAUSTIVE_TESTS`, are marked `slow` and run in the full tier
# (`pytest -m "slow or not slow"`, README "Tests"). What is left out repeats a check
# the quick tier makes on another shape, model or mode.
QUICK_CASES = {
    "test_conv2d_matmul_equals_lax": 1,
    "test_conv2d_hybrid_equals_lax": 2,
    "test_conv2d_hybrid_im2col_layouts_equal_lax": 1,
    "test_conv_relu_max_pool_equals_separate_lax_ops": 1,
    "test_pooling_equals_lax": 1,
    "test_bfloat16_compute": 1,
    "test_eval_mode_is_deterministic_and_pure": 1,
    "test_real_dataset_config_trains_on_mock_data": 1,
    "test_torch_twin_computes_what_the_cnnjax_model_computes": 3,
    # Per-loss and per-optimizer properties: every loss and optimizer keeps its own
    # reference-value test in the quick tier; these repeat a generic property over all.
    "test_every_classification_loss_trains": 6,
    "test_gradients_match_finite_differences": 8,
    "test_jit_equals_eager_and_vmap_is_per_example": 15,
    "test_finite_values_and_gradients_at_extremes": 16,
    "test_every_name_decreases_least_squares": 8,
    "test_scale_acts_on_every_named_optimizer": 6,
    "test_signal_during_startup_ends_the_run_cleanly": 1,
    "test_bad_benchmark_and_strategy_input_is_one_line": 1,
    "test_profile_step_bad_input_is_one_line_exit_2": 1,
    "test_initializer_has_the_bits_of_a_default_compile": 1,
}
EXHAUSTIVE_TESTS = (
    # Every model trains on a fixed batch in the quick tier except these larger ones
    # (their forward and backward passes are checked by the inspection and fast_ops tests;
    # embedding_cnn trains end to end in tests/test_metric_learning.py, tiny_cnn in
    # tests/test_study.py and tests/test_scene_tasks.py).
    *(f"tests/test_models.py::test_trains_on_fixed_batch[{m}-" for m in (
        "resnet18", "resnet20", "fcn", "unet_small", "vgg_small", "keras_cifar_cnn",
        "mnist_cnn", "simple_cnn", "lenet5", "tiny_unet", "loc_cnn", "seq_reader",
        "embedding_cnn", "tiny_cnn")),
    # End-to-end repeats of checks made op by op or in other tests.
    "tests/test_fast_ops.py::test_training_trajectory_matches_lax",
    "tests/test_fast_ops.py::test_models_fuse_only_in_training_and_keep_layers_for_inspection",
    "tests/test_fast_ops.py::test_conv2d_hybrid_strides_leaving_rows_unread",
    "tests/test_training.py::test_main_without_workdir_creates_a_timestamped_run",
    "tests/test_training.py::test_microbatches_equal_one_batch_without_batchnorm",
    "tests/test_inspection.py::test_command_line",
    "tests/test_generation.py::test_r1_penalty_by_hand_and_through_the_step",
    "tests/test_generation.py::test_train_step_updates_the_discriminator_then_the_generator",
    "tests/test_robustness.py::test_divergence_",
    "tests/test_robustness.py::test_corrupt_latest_checkpoint_is_skipped",
    "tests/test_robustness.py::test_sigint_exits_130_with_checkpoint",
    "tests/test_robustness.py::test_rerun_after_sigterm_equals_uninterrupted",
    "tests/test_robustness.py::test_different_config_in_same_workdir_is_refused",
    # The benchmark's protocol, profiles and report pieces are tested one by one in the
    # quick tier; this runs them together on a tiny workload.
    "tests/test_optimizer_benchmark.py::test_tiny_benchmark_end_to_end",
    # Several processes (jax.distributed over gloo): the sharded multi-device path they
    # share runs in the quick tier in one process (tests/test_parallel.py).
    "tests/test_multiprocess.py::",
    "tests/test_training.py::test_a_tie_keeps_the_best_epoch_the_summary_names",
    "tests/test_training.py::test_evaluation_traces_plain_lax_under_auto",
    "tests/test_training.py::test_other_seed_differs",
    "tests/test_models.py::test_trains_on_fixed_batch[bn_cnn-",
    "tests/test_models.py::test_mnist_cnn_default_dropout_is_half",
    "tests/test_scene_tasks.py::test_resume_from_mid_run_checkpoint_is_identical",
    "tests/test_diagnostics.py::test_logged_sharpness_is_the_hessians_top_eigenvalue",
    "tests/test_diagnostics.py::test_batch_stats_modes_are_the_train_and_eval_losses",
    "tests/test_diagnostics.py::test_train_mode_keeps_each_training_batch_apart",
    "tests/test_multiprocess.py::test_sigterm_to_one_process_stops_both_at_the_same_step",
    "tests/test_diagnostics.py::test_landscape_command_writes_consistent_slices",
    "tests/test_scene_tasks.py::test_parallel_modes_match_one_device",
    "tests/test_scene_tasks.py::test_study_ranks_by_the_task_headline",
    # One scene task end to end in the quick tier (segmentation: dense outputs, Dice/IoU,
    # its own plots); the other two share its loop, data path and writers.
    "tests/test_scene_tasks.py::test_run_writes_outputs_plots_and_tensorboard[localization]",
    "tests/test_scene_tasks.py::test_run_writes_outputs_plots_and_tensorboard[sequence]",
    "tests/test_study.py::test_group_equals_runs_trained_alone[sequential]",
    "tests/test_study.py::test_diverged_variant_is_marked_and_isolated[sequential]",
    # vmap is the accelerator strategy ("auto" never takes it on CPU), sequential is lanes
    # of one: the quick tier checks lanes against the same single runs.
    "tests/test_study.py::test_group_equals_runs_trained_alone[vmap]",
    "tests/test_study.py::test_diverged_variant_is_marked_and_isolated[vmap]",
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(config, items):
  del config
  seen = {}
  for item in items:
    name = getattr(item, "originalname", item.name)
    seen[name] = seen.get(name, 0) + 1
    if (name in QUICK_CASES and seen[name] > QUICK_CASES[name]) or item.nodeid.startswith(
        EXHAUSTIVE_TESTS):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One prepared-data directory for the whole session (digits is prepared once)."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def _read_event_tags(path):
  """Scalar tags in a TensorBoard event file, read with tensorboardX's protobuf classes
  (generated from TensorFlow's event.proto) and its CRC-32C, an independent reader."""
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto import event_pb2
  masked = lambda b: ((((crc32c(b) >> 15) | (crc32c(b) << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
  tags = set()
  with open(path, "rb") as f:
    data = f.read()
  pos, versions = 0, []
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked(header)
    payload = data[pos + 12:pos + 12 + length]
    assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked(payload)
    event = event_pb2.Event.FromString(payload)
    versions.append(event.file_version)
    tags.update(v.tag for v in event.summary.value)
    pos += 12 + length + 4
  assert versions[0] == "brain.Event:2"
  return tags


@pytest.fixture(scope="session")
def read_event_tags():
  """``path -> set of scalar tags`` of a TensorBoard event file (an independent reader)."""
  return _read_event_tags
