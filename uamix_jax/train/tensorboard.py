"""TensorBoard scalar event files, written with the standard library (no TensorFlow, tensorboardX or torch).

An event file is a TFRecord stream; each record is

    u64 len | u32 masked_crc(len bytes) | payload | u32 masked_crc(payload),
    masked_crc(x) = rotr15(crc32c(x)) + 0xA282EAD8 (mod 2^32),

and each payload a `tensorboard.Event` protobuf, encoded here by hand from its schema (field numbers):
Event {1: wall_time double, 2: step int64, 3: file_version string, 5: summary Summary, 7: session_log SessionLog},
Summary {1: repeated Value}, Value {1: tag string, 2: simple_value float}, SessionLog {1: status enum, START = 1}.
A SessionLog START at step s tells TensorBoard to drop the events with step >= s read before it (a resumed run).
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
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # reflected Castagnoli polynomial
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    """One TFRecord frame around `payload`."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"negative step {value}: TensorBoard steps are non-negative here")
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(*, wall_time: float, step: int = 0, file_version: str | None = None,
                 scalars: dict[str, float] | None = None, session_start: bool = False) -> bytes:
    """The protobuf bytes of one Event (see the module docstring for the schema)."""
    out = bytearray(b"\x09" + struct.pack("<d", wall_time))  # field 1, wire type 1 (64-bit)
    if step:
        out += b"\x10" + _varint(step)  # field 2, varint
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", float(value)))
                          for tag, value in scalars.items())
        out += _field(5, values)
    if session_start:
        out += _field(7, b"\x08\x01")  # SessionLog.status = START
    return bytes(out)


class ScalarEventWriter:
    """Appends scalar summaries to a new `events.out.tfevents.*` file in `logdir`, flushed after every write.

    `purge_step`: write a SessionLog START at that step first, so TensorBoard discards older events from there on.
    """

    def __init__(self, logdir: str, *, purge_step: int | None = None):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "ab")
        self._write(encode_event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            self._write(encode_event(wall_time=time.time(), step=purge_step, session_start=True))

    def _write(self, event: bytes) -> None:
        self._file.write(tfrecord(event))
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event holding every (tag, value) of `values` at `step`."""
        if values:
            self._write(encode_event(wall_time=time.time(), step=step, scalars=values))

    def close(self) -> None:
        self._file.close()
