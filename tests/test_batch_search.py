"""uamix_jax.train.batch_search: the largest batch that fits, on memory models (no compile).

A model gives GiB against batch; a rejected batch reports its temporaries (total less 1.1 GiB), as XLA:TPU's
out-of-memory message does, and a total of 0.
"""
from __future__ import annotations

import pytest

from uamix_jax.train.batch_search import Fit, Line, largest

MODELS = {
    "straight": lambda b: 0.55 + 0.44 * b,
    "overstated": lambda b: {4: 1.87, 8: 2.69}.get(b, 1.25 + 0.18 * b),  # small batches overstate a clip
    "understated": lambda b: {8: 2.84, 12: 3.28}.get(b, 1.62 + 0.138 * b),  # they understate it
    "curved": lambda b: 0.5 + 0.1 * b + 3e-4 * b * b,
    "steps": lambda b: 1.0 + 0.2 * b + (2.0 if b > 40 else 0.0),  # a jump (a layout change) no line sees
}
BATCHES = list(range(4, 513, 4))


def _measure(memory, hbm, calls):
    def measure(b):
        calls.append(b)
        total = memory(b)
        fits = total <= hbm
        return Fit(fits, total if fits else 0.0, total - 1.1, hbm)
    return measure


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("hbm", [15.75, 30.75, 95.74])
def test_exact_search_returns_the_boundary(name, hbm):
    """With exact=True: the batch returned fits and the next one does not, each batch measured at most once, at most
    6 measured where memory is straight beyond small batches (a bisection alone over these 128 batches takes 8 after
    its first two points), 11 on the curved model (whose quadratic term is a third of the memory at 400 clips; each
    line overshoots and its two confirms are rejected)."""
    memory, calls = MODELS[name], []
    found = largest(BATCHES, _measure(memory, hbm, calls), start=32, exact=True)
    fitting = [b for b in BATCHES if memory(b) <= hbm]
    assert found.best == fitting[-1], (found.best, calls)
    assert len(calls) == len(set(calls)) <= (11 if name == "curved" else 6), calls
    assert set(found.measured) == set(calls)


def test_a_straight_line_is_found_in_three_measures():
    """Without exact, on straight memory: the line through the start and its neighbour is the model's, and the one
    confirm at the batch it allows is the boundary."""
    calls = []
    found = largest(BATCHES, _measure(MODELS["straight"], 15.75, calls), start=8)
    assert found.lines[0].slope == pytest.approx(0.44) and found.lines[0].fixed == pytest.approx(0.55)
    assert found.best == max(b for b in BATCHES if MODELS["straight"](b) <= 15.75) == 32
    assert calls == [8, 12, 32]


@pytest.mark.parametrize("start,line,expected", [
    (8, Line(0.55, 0.44), [8, 32]),  # the chip's line, the start fits: its batch is confirmed, no second point
    (64, Line(0.55, 0.44), [64, 32]),  # the start is rejected here: the line's batch before any smaller one
    (64, Line(0.55, 0.6), [64, 24, 32]),  # a line that overstates a clip: refitted through the rejected start
])
def test_a_line_from_elsewhere_is_confirmed_first(start, line, expected):
    """A line fitted on another slice of the chip: confirmed, and refitted (the rejected start counts at the
    temporaries it asked for) when its batch uses under 90 % of the memory."""
    calls = []
    found = largest(BATCHES, _measure(MODELS["straight"], 15.75, calls), start=start, line=line)
    assert found.best == 32 and calls == expected


def test_nothing_fits_and_one_batch():
    calls = []
    assert largest(BATCHES, _measure(MODELS["straight"], 1.0, calls), start=64).best == 0
    assert calls == [64, 4]
    assert largest([8], _measure(MODELS["straight"], 15.75, []), exact=True).best == 8
    with pytest.raises(ValueError, match="no batch"):
        largest([], _measure(MODELS["straight"], 15.75, []))


@pytest.mark.parametrize("refits", [0, 1])
def test_unsettled_lines_end_in_bisection(refits):
    """Without exact, when the refits run out while the last line's confirms were rejected (the curved model, where
    every line overshoots), the bracket is still closed: the batch returned is the boundary, not the last fitting
    batch a line happened to confirm."""
    memory, calls = MODELS["curved"], []
    found = largest(BATCHES, _measure(memory, 95.74, calls), start=32, refits=refits)
    assert len(found.lines) == 1 + refits
    assert found.best == max(b for b in BATCHES if memory(b) <= 95.74), (found.best, calls)
    assert len(calls) == len(set(calls))
