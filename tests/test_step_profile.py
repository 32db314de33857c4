"""cnnjax.step_profile: thunk attribution by hand, and a real trace of a tiny train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import step_profile

HLO = """
  %fusion.1 = f32[8]{0} fusion(%p0), kind=kLoop, metadata={op_name="jit(train_step)/jvp(BNCNN)/bn1/sub" stack_frame_id=3}
  %convolution.2 = f32[8]{0} convolution(%a, %b), metadata={op_name="jit(train_step)/transpose(jvp(BNCNN))/conv1/conv_general_dilated"}
  ROOT %fusion.3 = f32[8]{0} fusion(%p1), metadata={op_name="jit(train_step)/mul"}
  %copy.4 = f32[8]{0} copy(%p2)
"""


def test_op_sources_and_split():
  sources = step_profile.op_sources(HLO)
  assert sources == {"fusion.1": "jit(train_step)/jvp(BNCNN)/bn1/sub",
                     "convolution.2": "jit(train_step)/transpose(jvp(BNCNN))/conv1/"
                                      "conv_general_dilated",
                     "fusion.3": "jit(train_step)/mul"}
  assert step_profile.split_source(sources["convolution.2"]) == ("backward", "conv1")
  assert step_profile.split_source("jit(f)/jvp(M)/add") == ("forward", "(model)")


def test_summarize_by_hand():
  # Two steps: fusion.1 3+5 ms, convolution.2 2+2 ms, fusion.3 1+1 ms, copy.4 (no
  # metadata) 4 ms once. Per step: forward 4, backward 2, other 1 + 2 = 3; total 9.
  ms = 1_000_000
  events = [("fusion.1", 3 * ms), ("fusion.1", 5 * ms), ("convolution.2", 2 * ms),
            ("convolution.2", 2 * ms), ("fusion.3", ms), ("fusion.3", ms), ("copy.4", 4 * ms)]
  p = step_profile.summarize(events, step_profile.op_sources(HLO), steps=2, step_ms=12.0)
  assert p.thunk_ms == pytest.approx(9.0)
  assert [(r.key, r.ms_per_step) for r in p.by_pass] == [
      ("forward", 4.0), ("other", 3.0), ("backward", 2.0)]
  assert p.by_layer[0].key == "forward: bn1" and p.by_layer[0].count_per_step == 1.0
  assert p.by_thunk[0].key == "fusion.1"


def test_profile_of_a_real_compiled_step():
  # A real trace: every thunk time comes from jax.profiler, not from this test.
  w = jnp.ones((64, 64))

  def step(x):
    return jnp.tanh(x @ w) * 2.0

  x = jnp.ones((256, 64))
  compiled = jax.jit(step).lower(x).compile()
  p = step_profile.profile_compiled(compiled, (x,), steps=3,
                                    carry=lambda out, args: (out,))
  assert p.step_ms > 0 and p.thunk_ms > 0
  assert np.isclose(sum(r.ms_per_step for r in p.by_thunk), p.thunk_ms)
  with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
    step_profile.profile_compiled(compiled, (x,), steps=0)


@pytest.mark.parametrize("argv,expected", [
    (["--model=resnet999"], ["--model='resnet999'", "resnet20"]),
    (["--model=fcn"], ["--model='fcn'", "bn_cnn"]),
    (["--steps=0"], ["--steps=0", ">= 1"]),
])
def test_profile_step_bad_input_is_one_line_exit_2(argv, expected):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "experiments.profile_step", *argv], cwd=root,
                     capture_output=True, text=True, timeout=120)
  lines = [x for x in r.stderr.splitlines() if x.strip() and "WARNING" not in x]
  assert r.returncode == 2, r.stderr
  assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  assert all(e in lines[0] for e in expected), lines[0]
