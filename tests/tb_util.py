"""Reads TensorBoard event files back with TensorBoard's own reader (`EventAccumulator`), an oracle independent of
the writer: it checks each record's CRCs, parses the protobufs and applies TensorBoard's purge rule (a SessionLog
START at step s drops the values with step >= s read before it, from the files of a run read in name order)."""
from __future__ import annotations

import pathlib
import sys
import types

# TensorBoard reads event files with its own pure-Python stub of the TensorFlow API unless TensorFlow is importable,
# and importing TensorFlow (a test dependency of other tests) costs ~10 s. A `tensorboard.compat.notf` module is
# TensorBoard's switch (its `no_tensorflow` build target) for using the stub unconditionally.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError as e:  # a test dependency (setup.py's "test" extra)
    raise ImportError("tests/tb_util.py reads event files with TensorBoard's EventAccumulator: "
                      "`pip install tensorboard` (or `pip install -e .[test]`)") from e


def load_run(logdir: str | pathlib.Path) -> EventAccumulator:
    """Every event of the run in `logdir`, all scalars kept (no reservoir sampling)."""
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0}, purge_orphaned_data=True)
    return accumulator.Reload()


def scalar_series(logdir: str | pathlib.Path, tag: str) -> dict[int, float]:
    """step → value of `tag` as TensorBoard shows it for the run in `logdir`."""
    run = load_run(logdir)
    if tag not in run.Tags()["scalars"]:
        raise KeyError(f"no scalar tag {tag!r} in {logdir}; tags: {run.Tags()['scalars']}")
    return {event.step: event.value for event in run.Scalars(tag)}
