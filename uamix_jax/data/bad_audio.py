"""Bad audio never stops a run: the start-up check for missing files and the `bad_audio.txt` log.

Worker processes cannot share a file handle, so they only *report*: each batch carries the (clip index, reason) of
every clip that failed to load while it was built, and the main process records them here. The log holds one
line per bad file, `<path>\t<reason>`, each file once, also across epochs and restarts (it re-reads the file it
appends to).
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

from uamix_jax.data.manifest import Manifest


class BadAudioLog:
    """The set of bad files found so far, mirrored to `path` (or kept in memory when `path` is None)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.entries: dict[str, str] = {}
        if self.path is not None and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    name, _, reason = line.rstrip("\n").partition("\t")
                    if name:
                        self.entries.setdefault(name, reason)

    @property
    def count(self) -> int:
        return len(self.entries)

    def record(self, name: str, reason: str) -> bool:
        """Adds one bad file; returns False (and writes nothing) if it was already listed."""
        if name in self.entries:
            return False
        reason = " ".join(reason.split())  # one line per file, whatever the decoder said
        self.entries[name] = reason
        logging.warning("bad audio skipped (%d so far): %s: %s", self.count, name, reason)
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{name}\t{reason}\n")
        return True


def read_bad_audio_log(path: str | os.PathLike) -> dict[str, str]:
    """{path: reason} from a `bad_audio.txt` (empty if the file does not exist)."""
    return BadAudioLog(path).entries


def check_manifest(manifest: Manifest, *, max_checks: int = 20000, seed: int = 0) -> int:
    """Start-up check: raises if more than half of the manifest's files are missing; returns the missing count.

    Manifests above `max_checks` clips are checked on a seeded random sample of that size (the message says so).
    TFDS manifests have no files and always pass.
    """
    n = len(manifest)
    if manifest.tfds is not None or n == 0:
        return 0
    rows = np.arange(n) if n <= max_checks else np.sort(np.random.default_rng(seed).choice(n, max_checks, False))
    missing = [manifest.paths[int(i)] for i in rows if not os.path.isfile(manifest.paths[int(i)])]
    checked = len(rows)
    what = f"{len(missing)} of {checked} files" + ("" if checked == n else f" (a random sample of the {n} clips)")
    if 2 * len(missing) > checked:
        raise FileNotFoundError(
            f"dataset {manifest.name!r}: {what} are missing, e.g. {missing[:5]}. Check config.data.root and that the "
            f"dataset is fully unpacked.")
    if missing:
        logging.warning("dataset %r: %s are missing (first: %s); they will be skipped as bad audio",
                        manifest.name, what, missing[:3])
    return len(missing)
