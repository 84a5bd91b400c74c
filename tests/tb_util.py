"""Reads TensorBoard event files back with tensorboardX's protobuf classes and CRC (an oracle independent of ours)."""
from __future__ import annotations

import pathlib
import struct

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c


def read_events(path: str | pathlib.Path) -> list[event_pb2.Event]:
    """Every Event of a TFRecord event file, checking both CRCs of each frame."""
    data = pathlib.Path(path).read_bytes()
    events, pos = [], 0
    while pos < len(data):  # frame: u64 length | u32 masked crc(length) | payload | u32 masked crc(payload)
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header), f"{path}: bad length crc"
        payload = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(payload), path
        events.append(event_pb2.Event.FromString(payload))
        pos += 16 + length
    return events


def scalar_series(logdir: str | pathlib.Path, tag: str) -> dict[int, float]:
    """step → value of `tag` over the event files of `logdir` in creation order, applying TensorBoard's purge rule:
    a SessionLog START at step s drops the values with step >= s read before it."""
    series: dict[int, float] = {}
    for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        for event in read_events(path):
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                series = {k: v for k, v in series.items() if k < event.step}
            for value in event.summary.value:
                if value.tag == tag:
                    series[event.step] = value.simple_value
    return series
