"""The package's shape, read from its folders: each folder is a stage, and a module imports only
from its own folder or a lower stage; no job imports another job; no cycle, no private name
across modules, no long function.

Stages, lowest first (the package root's modules, `cli` and the public API aside, are the base):
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxpref"
STAGES = [
    ".",  # config, rundir, monitoring, safety: what every stage reads
    "data", ("inputs", "scoring"), "models", "parallel", "serve", "training", "jobs",
    "api",  # cli.py, the public API in api.py and its lazy re-export in __init__.py
]  # fmt: skip
TOP = {"cli", "api", "__init__"}
MAX_FUNCTION_LINES = 80
__doc__ += "\n".join(f"{i}. {stage}" for i, stage in enumerate(STAGES))


def folder_of(module: str) -> str:
    """'jaxpref.data.arena' -> 'data'; 'jaxpref.config' -> '.'; 'jaxpref.cli' -> 'api'."""
    parts = module.split(".")[1:]
    if len(parts) == 1:
        return "api" if parts[0] in TOP else "."
    return parts[0]


def stage_of(module: str) -> int:
    folder = folder_of(module)
    return next(i for i, s in enumerate(STAGES) if folder in (s if isinstance(s, tuple) else (s,)))


def modules() -> dict[str, ast.Module]:
    """{'jaxpref.data.arena': tree} for every module; a package's __init__ under its own name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        found[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return found


def imported(tree: ast.Module, known: set[str]) -> dict[str, set[str]]:
    """{jaxpref module: names taken from it} for every import, at any depth of the module."""
    found: dict[str, set[str]] = {}
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxpref"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in known:  # from jaxpref.data import arena
                    found.setdefault(submodule, set())
                    aliases[alias.asname or alias.name] = submodule
                else:  # from jaxpref.data.arena import DataError
                    found.setdefault(node.module, set()).add(alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("jaxpref."):
                    found.setdefault(alias.name, set())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in aliases:
                found[aliases[node.value.id]].add(node.attr)
    return found


def graph() -> dict[str, dict[str, set[str]]]:
    trees = modules()
    return {name: imported(tree, set(trees)) for name, tree in trees.items()}


def test_every_folder_is_a_stage():
    folders = {folder_of(name) for name in modules() if name != "jaxpref"}
    named = {f for s in STAGES for f in (s if isinstance(s, tuple) else (s,))}
    assert folders <= named, f"folders without a stage: {sorted(folders - named)}"


def test_imports_stay_in_the_folder_or_go_down_the_stages():
    for name, targets in graph().items():
        for target, names in targets.items():
            if target == "jaxpref" or folder_of(target) == folder_of(name):
                continue
            assert stage_of(target) < stage_of(name), f"{name} imports {target}, not below it"
            private = sorted(n for n in names if n.startswith("_"))
            assert not private, f"{name} uses private names of {target}: {private}"


def test_no_job_imports_another_job():
    for name, targets in graph().items():
        if folder_of(name) == "jobs":
            jobs = sorted(t for t in targets if folder_of(t) == "jobs" and t != "jaxpref.jobs")
            assert not jobs, f"{name} imports the jobs {jobs}: what two jobs share lives below them"


def test_no_import_cycles():
    edges = {name: set(targets) for name, targets in graph().items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in edges.get(name, ()):
                visit(target, (*path, name))
            done.add(name)

    for name in edges:
        visit(name, ())


def import_depth() -> int:
    """The longest chain of jaxpref imports (one module importing the next)."""
    edges = {name: set(targets) - {name} for name, targets in graph().items()}
    depth: dict[str, int] = {}

    def longest(name: str) -> int:
        if name not in depth:
            below = [longest(t) for t in edges.get(name, ()) if t in edges]
            depth[name] = 1 + max(below, default=0)
        return depth[name]

    return max(longest(name) for name in edges)


def test_no_function_is_longer_than_the_limit():
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name}: {length} lines"


def test_the_ensemble_job_loads_no_deep_learning_framework():
    """Blending predictions is numpy and scikit-learn: it must work where keras cannot load."""
    script = (
        "import sys\nimport jaxpref.jobs.ensemble\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'jax', 'tensorflow'}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_each_module_imports_first_on_its_own():
    """Each module imported before any other jaxpref module (third-party imports stay cached)."""
    script = (
        "import importlib, sys\n"
        f"for name in {sorted(modules())!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('jaxpref')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
