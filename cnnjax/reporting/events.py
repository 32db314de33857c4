"""TensorBoard event files, written directly: scalars only, no TensorFlow, no tensorboardX.

An event file is a sequence of TFRecords, each ``length (uint64 LE), masked CRC-32C of
the length, data, masked CRC-32C of the data``, whose data is a serialised
``tensorflow.Event`` protocol buffer (fields: 1 ``wall_time`` double, 2 ``step`` int64,
3 ``file_version`` string, 5 ``summary``; a ``Summary`` holds repeated ``Value``s with
1 ``tag`` string and 2 ``simple_value`` float). The formats are TensorFlow's
(``tensorflow/core/lib/io/record_writer.cc``, ``core/util/event.proto``,
``core/framework/summary.proto``); CRC-32C is the Castagnoli polynomial, masked as
``((crc >> 15) | (crc << 17)) + 0xa282ead8``. Written here because the usual writer,
tensorboardX, imports PyTorch whenever it is installed (2.4 s of start-up).
"""

from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of ``data``.

  Examples:
    >>> hex(crc32c(b"123456789"))  # the standard check value (RFC 3720, B.4)
    '0xe3069283'
  """
  crc = 0xFFFFFFFF
  for b in data:
    crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
  """One TFRecord framing ``data``."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _masked(crc32c(length))) + data
          + struct.pack("<I", _masked(crc32c(data))))


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= 0xFFFFFFFFFFFFFFFF  # int64 fields encode negatives as 10-byte varints
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(step: int, *, wall_time: float, scalars: dict[str, float] | None = None,
          file_version: str | None = None) -> bytes:
  """A serialised ``Event`` with one ``simple_value`` per entry of ``scalars``."""
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
  if file_version is not None:
    out += _field_bytes(3, file_version.encode())
  if scalars:
    values = b"".join(
        _field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5)
                     + struct.pack("<f", value))
        for tag, value in scalars.items())
    out += _field_bytes(5, values)
  return out


class EventWriter:
  """Appends scalar summaries to ``<directory>/events.out.tfevents.<time>.<host>``."""

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    now = time.time()
    self.path = os.path.join(directory, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
    self._file = open(self.path, "ab")
    self._file.write(record(event(0, wall_time=now, file_version="brain.Event:2")))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    self._file.write(record(event(step, wall_time=time.time(), scalars=values)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()
