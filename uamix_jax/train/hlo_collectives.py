"""The collectives of a compiled XLA program and the bytes they move, read from its HLO text.

Each all-reduce, all-gather, reduce-scatter, collective-permute and all-to-all is counted by the bytes of its
operands on one device (an async pair such as `all-gather-start` / `all-gather-done` once, at its start). Compiled
HLO text names operands without their shapes, so every instruction's result type is recorded first and operands are
looked up by name.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterator

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                  "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_SHAPE = re.compile(r"\b(" + "|".join(_ELEMENT_BYTES) + r")\[([\d,]*)\]")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%([\w.-]+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def _balanced(text: str, start: int) -> int:
    """The index just past the ')' closing the '(' at text[start], skipping {...} (layouts, attributes)."""
    depth = braces = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            braces += 1
        elif ch == "}":
            braces -= 1
        elif braces == 0 and ch == "(":
            depth += 1
        elif braces == 0 and ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _instructions(hlo_text: str) -> Iterator[tuple[str, str, str, str, str]]:
    """(name, result type, opcode, operand text, line) of every instruction of an HLO module's text."""
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m is None:
            continue
        i = m.end()
        j = _balanced(line, i) if line.startswith("(", i) else line.index(" ", i)
        k = line.find("(", j)
        if k < 0:
            continue
        yield m.group(1), line[i:j], line[j:k].strip(), line[k + 1:_balanced(line, k) - 1], line


def _nbytes(types: str) -> int:
    return sum(_ELEMENT_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
               for t, dims in _SHAPE.findall(types))


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    bytes: int  # of its operands, per device
    operands: str  # their shapes, e.g. 'f32[768,2304] bf16[12]'
    op_name: str  # the JAX source of the op (HLO metadata), '' when absent


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of a compiled HLO module with the bytes of its operands (per device); an async pair
    (`all-gather-start` / `-done`) is counted once, at its start."""
    types, found = {}, []
    for name, result, opcode, operands, line in _instructions(hlo_text):
        types[name] = result
        kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
        if kind not in COLLECTIVES:
            continue
        shapes = " ".join(types.get(op, "") for op in re.findall(r"%([\w.-]+)", operands))
        op_name = _OP_NAME.search(line)
        found.append(Collective(kind, _nbytes(shapes), " ".join("%s[%s]" % s for s in _SHAPE.findall(shapes)),
                                op_name.group(1) if op_name else ""))
    return found


def collective_totals(found: list[Collective]) -> dict[str, tuple[int, int]]:
    """{kind: (count, bytes)} over COLLECTIVES (kinds absent from the program give (0, 0))."""
    return {k: (sum(c.kind == k for c in found), sum(c.bytes for c in found if c.kind == k)) for k in COLLECTIVES}
