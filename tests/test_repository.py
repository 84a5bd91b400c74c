"""The repository's own rules: layers import downward, docs cite only files the repository holds, and user-facing text
speaks of the project, not of how it was written."""
from __future__ import annotations

import ast
import os
import re
import subprocess

import pytest

from tests.train_util import ROOT

PACKAGE = os.path.join(ROOT, "uamix_jax")
STEP_MODULES = ("uamix_jax.train.tune_step", "uamix_jax.train.pretrain_step", "uamix_jax.train.finetune_step")


def _module_file(name: str) -> str | None:
    path = os.path.join(ROOT, *name.split("."))
    for candidate in (path + ".py", os.path.join(path, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _imports(name: str) -> set[str]:
    """Every uamix_jax module `name` imports, at module level or inside functions (an AST walk, nothing executed)."""
    with open(_module_file(name), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    return {m for m in found if m.startswith("uamix_jax") and _module_file(m)}


def _closure(name: str) -> dict[str, str]:
    """{module: the module that first imports it} over everything `name` reaches inside uamix_jax."""
    seen, todo = {name: ""}, [name]
    while todo:
        current = todo.pop()
        for m in sorted(_imports(current)):
            if m not in seen:
                seen[m] = current
                todo.append(m)
    return seen


@pytest.mark.parametrize("module", STEP_MODULES)
def test_step_modules_import_nothing_from_evaluation(module):
    reached = _closure(module)
    bad = {m: by for m, by in reached.items() if m.startswith("uamix_jax.evaluation")}
    assert not bad, f"{module} reaches {bad} (module: imported by)"


def test_evaluation_imports_nothing_from_train():
    """Layers import downward only: the evaluation package (few-shot, linear probe, metrics) never loads train/."""
    folder = os.path.join(PACKAGE, "evaluation")
    for f in sorted(os.listdir(folder)):
        if f.endswith(".py"):
            reached = _closure(f"uamix_jax.evaluation.{f[:-3]}")
            bad = {m: by for m, by in reached.items() if m.startswith("uamix_jax.train")}
            assert not bad, f"uamix_jax.evaluation.{f[:-3]} reaches {bad}"


def test_the_scan_sees_imports_inside_functions(tmp_path):
    """The AST walk finds a lazy import in a function body (the case a module-level scan would miss)."""
    assert "uamix_jax.interop.audiomae" in _imports("uamix_jax.train.tune")  # imported inside load_init


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = [f for f in out.splitlines() if f.endswith((".py", ".md", ".ipynb", ".txt", ".cfg", ".ini", ".toml"))
             or f.startswith(".ci/")]
    return [f for f in names if os.path.isfile(os.path.join(ROOT, f))]  # a file deleted but not yet committed


# Files a command writes at run time (named in docs as outputs), not files of the repository.
RUNTIME_OUTPUTS = {"replicate.md"}
_MD_PATH = re.compile(r"(?<![\w/.-])((?:\.{1,2}/)?[\w./-]*[\w-]\.md)\b")


def test_every_markdown_path_resolves_to_a_tracked_file():
    tracked = set(_tracked_files())
    missing = []
    for name in tracked:
        if name.startswith("tests/"):
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read()
        for match in _MD_PATH.finditer(text):
            path = match.group(1)
            if os.path.basename(path) in RUNTIME_OUTPUTS or "://" in text[max(0, match.start() - 60):match.start()]:
                continue
            here = os.path.normpath(os.path.join(os.path.dirname(name), path))
            if here not in tracked and os.path.normpath(path) not in tracked:
                missing.append(f"{name}: {path}")
    assert not missing, missing


# Outside tests/, nothing cites documents the repository does not hold, nor tells how or when it was written.
_FORBIDDEN = [
    re.compile(r"\b" + "SP" + r"EC(\.md)?\b"),  # the design notes the project was built from: docs/method.md
    re.compile(r"\breference/[a-z_]+\." + "md"),
    re.compile(r"\.\./" + "shared"),
    re.compile(r"\bissues? ?#?\d+", re.IGNORECASE),
    re.compile(r"\bthe " + r"issue\b", re.IGNORECASE),
    re.compile(r"\b" + "session" + r"s?\b", re.IGNORECASE),
]


def test_user_facing_text_speaks_of_the_project_only():
    hits = []
    for name in _tracked_files():
        if name.startswith("tests/"):
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                hits += [f"{name}:{number}: {line.strip()[:100]}" for p in _FORBIDDEN if p.search(line)]
    assert not hits, "\n".join(hits)
