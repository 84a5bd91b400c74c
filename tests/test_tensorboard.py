"""The hand-written TensorBoard event writer against tensorboardX's protobuf classes and CRC."""
from __future__ import annotations

import numpy as np
import pytest
from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import masked_crc32c as reference_masked_crc

from tests.tb_util import read_events
from uamix_jax.train.tensorboard import ScalarEventWriter, crc32c, encode_event, masked_crc32c


def test_crc32c_check_value_and_masking():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 100, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == reference_masked_crc(data)


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**40])
def test_events_serialise_like_protobuf(step):
    wall = 1795658298.123456
    scalars = {"loss": 4.25, "lr": 1e-4, "nn_accuracy": 0.3}
    ours = encode_event(wall_time=wall, step=step, scalars=scalars)
    ref = event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]))
    assert ours == ref.SerializeToString()
    assert (encode_event(wall_time=wall, file_version="brain.Event:2")
            == event_pb2.Event(wall_time=wall, file_version="brain.Event:2").SerializeToString())
    start = event_pb2.Event(wall_time=wall, step=step,
                            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
    assert encode_event(wall_time=wall, step=step, session_start=True) == start.SerializeToString()
    with pytest.raises(ValueError, match="negative step"):
        encode_event(wall_time=wall, step=-1)


def test_writer_file_reads_back_with_valid_frames(tmp_path):
    writer = ScalarEventWriter(str(tmp_path), purge_step=5)
    writer.scalars(5, {"loss": 1.5, "grad_norm": 2.0})
    writer.scalars(6, {"loss": 1.25})
    writer.close()
    events = read_events(writer.path)
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 5 and events[1].session_log.status == event_pb2.SessionLog.START
    got = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events[2:]]
    assert got == [(5, {"loss": 1.5, "grad_norm": 2.0}), (6, {"loss": 1.25})]
    assert [p.name for p in tmp_path.iterdir()] == [writer.path.rsplit("/", 1)[1]]
    assert writer.path.rsplit("/", 1)[1].startswith("events.out.tfevents.")
