"""The largest batch a step fits in memory, from few compiles: `largest(batches, measure, ...)`.

A compile of a large model takes minutes, so the search guesses before it tries. A step's memory is close to a
straight line in its batch, memory(b) = fixed + slope · b, so two compiles give a line and the batch it allows,
b* = (hbm − fixed) / slope, which one compile confirms (one more, one batch lower, if it was rejected). Two small
batches can misjudge a clip's cost either way (their fixed overheads weigh more), so when the confirmed batch uses
under `refit_below` of the memory, or both confirms were rejected, the line is fitted again through the largest batch
known to fit and that compile, at most `refits` times. A rejected compile still says how much it asked for: the
compiler names its temporaries, and the rest of the step (arguments, outputs, code) is the largest fitting one's.
The bracket between the largest batch that fits and the smallest rejected one is then closed by bisection over the
batches the step takes, so that the answer is the boundary (it fits, the next one does not), when `exact` asks for it
or when the refits ran out with the lines still unsettled (memory that bends as the step nears the chip's limit,
where the compiler rematerialises or re-tiles, and every line overshoots).

Written here, not taken from a library: no tuning library plans a compile-only search over an accelerator's memory.
Pure Python, no JAX: `measure` compiles (uamix_jax.train.tpu_plan) or models memory (the tests).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Fit:
    """What one compile says about one batch: fits or not, its total bytes (0 when rejected), its temporaries (for a
    rejected step, the figure in the compiler's out-of-memory message) and the memory it was judged against."""

    fits: bool
    total: float
    temp: float
    hbm: float


@dataclasses.dataclass(frozen=True)
class Line:
    """memory = fixed + slope · b, through two compiles."""

    fixed: float
    slope: float

    @classmethod
    def through(cls, p: tuple[int, Fit], q: tuple[int, Fit]) -> "Line":
        (b1, f1), (b2, f2) = p, q
        slope = (f2.total - f1.total) / (b2 - b1)
        return cls(f1.total - slope * b1, slope)

    def allows(self, hbm: float) -> float:
        """The batch b at which fixed + slope · b = hbm (infinite for a line that does not rise)."""
        return (hbm - self.fixed) / self.slope if self.slope > 0 else float("inf")


@dataclasses.dataclass
class Search:
    """The largest batch found (0 when the smallest does not fit), the lines fitted on the way, every batch measured,
    and the memory they were judged against."""

    best: int
    lines: list[Line]
    measured: dict[int, Fit]
    hbm: float

    @property
    def allowed(self) -> list[float]:
        """The batch each line allowed under `hbm`."""
        return [line.allows(self.hbm) for line in self.lines]


def largest(batches: Sequence[int], measure: Callable[[int], Fit], *, start: int | None = None,
            line: Line | None = None, refits: int = 2, refit_below: float = 0.9, exact: bool = False) -> Search:
    """The largest of `batches` (ascending, the ones the step takes) whose step fits, measuring as few as it can.

    start: a batch to measure first (the config's own; default the smallest); the line's second point is its
    neighbour below when it uses over half the memory, above otherwise. line: a line fitted elsewhere (another slice
    of the same chip: memory per chip against batch per chip), tried before any second point. exact: bisect to the
    boundary even after a line settled it (one or more compiles to reject the next batch). `measure` is called at
    most once per batch.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("no batch to search")
    measured: dict[int, Fit] = {}

    def at(b: int) -> Fit:
        if b not in measured:
            measured[b] = measure(b)
        return measured[b]

    def confirm(allowed: float) -> tuple[int, int]:
        """(the largest batch at or below `allowed` if it fits, else the next one down if that fits, else 0; the
        first tried, 0 if none)."""
        below = [b for b in batches if b <= allowed][-2:][::-1]
        for b in below:
            if at(b).fits:
                return b, below[0]
        return 0, below[0] if below else 0

    def asked(b: int, fitting: tuple[int, Fit]) -> tuple[int, Fit]:
        """A rejected batch at the memory it asked for: its temporaries, which the compiler names, and the rest of
        the step (arguments, outputs, code) as in the fitting one."""
        r = at(b)
        return b, Fit(False, r.temp + fitting[1].total - fitting[1].temp, r.temp, r.hbm)

    start = start if start in batches else batches[0]
    hbm = at(start).hbm
    lines: list[Line] = []
    low, best, nxt = None, ((start, at(start)) if at(start).fits else None), line
    if best is None and line is not None:  # rejected here: the line from elsewhere before this slice's smallest
        lines.append(line)
        b, _ = confirm(line.allows(hbm))
        best = (b, at(b)) if b else None
        nxt = Line.through(best, asked(start, best)) if b and at(b).total < refit_below * hbm else None
    if best is None:
        if not at(batches[0]).fits:
            return Search(0, lines, measured, hbm)
        best, nxt = (batches[0], at(batches[0])), None
    if nxt is None and not (lines and best[0] > batches[0]):  # a line through this slice's own two points
        i = batches.index(best[0])
        other = batches[i - 1] if best[1].total > hbm / 2 and i > 0 else batches[min(i + 1, len(batches) - 1)]
        if other != best[0]:
            low, high = sorted([best, (other, at(other))], key=lambda p: p[0])
            if high[1].fits:
                best, nxt = high, Line.through(low, high)
            else:  # the upper point was rejected: the largest lies between the two
                best = low
    while nxt is not None and len(lines) < 1 + refits:
        lines.append(nxt)
        b, tried = confirm(nxt.allows(hbm))
        nxt = None
        if b > best[0]:
            low, best = best, (b, at(b))
            if best[1].total < refit_below * hbm:
                nxt = Line.through(low, best)
        elif not b and tried > best[0]:  # rejected: the compiler's temporaries say by how much
            nxt = Line.through(best, asked(tried, best))
    unsettled = nxt is not None  # the refits ran out while the last confirm still asked for another line
    return Search(_bisect(batches, at, measured, best[0]) if exact or unsettled else best[0], lines, measured, hbm)


def _bisect(batches: list[int], at: Callable[[int], Fit], measured: dict[int, Fit], best: int) -> int:
    """The largest batch that fits, from `best` (which fits): the smallest batch known to be rejected above it (else
    found by doubling the step up the list), then bisection between the two."""
    lo = batches.index(best)
    rejected = [i for i, b in enumerate(batches) if i > lo and b in measured and not measured[b].fits]
    hi, step = (rejected[0] if rejected else None), 1
    while hi is None and lo < len(batches) - 1:
        i = min(lo + step, len(batches) - 1)
        if at(batches[i]).fits:
            lo, step = i, 2 * step
        else:
            hi = i
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(batches[mid]).fits else (lo, mid)
    return batches[lo]
