"""cnnjax.reporting: the progress display in both modes, and TensorBoard event files."""

import io
import struct

from cnnjax.reporting import Progress, events


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_log_mode_writes_plain_lines():
  out = io.StringIO()
  p = Progress(100, mode="auto", metrics=("loss", "accuracy"), stream=out)
  assert p.mode == "log"  # not a terminal
  p.stage("compiling")
  p.start(0)
  p.advance(10, 1)  # silent in log mode
  p.update(50, 2, {"loss": 0.123456, "accuracy": 0.5}, log_line=True)
  p.close()
  lines = out.getvalue().splitlines()
  assert lines[0] == "compiling"
  assert lines[1].startswith("step 50/100 epoch 2 loss 0.1235 accuracy 0.5000 ")
  assert "\x1b" not in out.getvalue()  # no terminal control codes in a log


def test_progress_bar_mode_draws_on_a_terminal():
  out = _Terminal()
  p = Progress(40, mode="auto", metrics=("loss", "accuracy"), stream=out)
  assert p.mode == "bar"
  p.start(0)
  for step in range(1, 41):
    p.advance(step, 1)
  p.update(40, 1, {"loss": 0.25, "accuracy": 0.75})
  p.message("epoch 1/1  train loss 0.2500")
  p.close()
  text = out.getvalue()
  assert "40/40" in text and "loss 0.2500 accuracy 0.7500" in text
  assert "epoch 1/1  train loss 0.2500" in text


def test_disabled_progress_writes_nothing():
  out = _Terminal()
  p = Progress(10, mode="bar", enabled=False, stream=out)
  p.start(0)
  p.update(5, 1, {"loss": 1.0}, log_line=True)
  p.message("hidden")
  p.close()
  assert out.getvalue() == ""


def test_event_records_frame_and_checksum_their_payload():
  """The TFRecord framing, checked with tensorboardX's own CRC-32C (an independent one)."""
  from tensorboardX.crc32c import crc32c
  data = events.event(3, wall_time=1.5, scalars={"train/loss": 0.25})
  framed = events.record(data)
  (length,) = struct.unpack("<Q", framed[:8])
  assert length == len(data) and framed[12:12 + length] == data
  masked = lambda b: ((((crc32c(b) >> 15) | (crc32c(b) << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
  assert struct.unpack("<I", framed[8:12])[0] == masked(framed[:8])
  assert struct.unpack("<I", framed[-4:])[0] == masked(data)
  from tensorboardX.proto import event_pb2
  parsed = event_pb2.Event.FromString(data)
  assert parsed.step == 3 and parsed.wall_time == 1.5
  assert [(v.tag, v.simple_value) for v in parsed.summary.value] == [("train/loss", 0.25)]
