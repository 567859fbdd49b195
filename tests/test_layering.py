"""The package's shape: layers without cycles, no private names across modules, short functions.

Layers, lowest first (a module imports only from its own layer or lower ones, never in a cycle):
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxpref"
LAYERS = [
    {"config", "data", "text", "rundir", "safety"},
    {
        "backbones", "baselines", "calibration", "deberta_attention", "distillation",
        "distribution", "hf_deberta", "hh_rlhf", "families", "metrics", "probabilities",
        "lora", "sharding", "torch_pickle",
        "monitoring", "optimization", "pipeline", "report", "tiny_preset",
    },
    {"bundle", "callbacks", "checkpoints", "model"},
    {"crossval", "ensemble", "evaluation", "export", "prediction", "training"},
    {"cli"},
]  # fmt: skip
MAX_FUNCTION_LINES = 80
__doc__ += "\n".join(f"{i}. {', '.join(sorted(layer))}" for i, layer in enumerate(LAYERS))


def modules() -> dict[str, ast.Module]:
    return {
        path.stem: ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.glob("*.py"))
        if path.stem != "__init__"
    }


def imported(tree: ast.Module) -> dict[str, set[str]]:
    """{jaxpref module: names taken from it} for every import, at any depth of the module."""
    found: dict[str, set[str]] = {}
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "jaxpref":
            for alias in node.names:
                found.setdefault(alias.name, set())
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxpref."):
            found.setdefault(node.module.split(".")[1], set()).update(a.name for a in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in aliases:
                found[aliases[node.value.id]].add(node.attr)
    return found


def layer_of(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def test_every_module_has_a_layer():
    assert set(modules()) == set().union(*LAYERS)


def test_imports_go_down_the_layers_and_never_take_private_names():
    for name, tree in modules().items():
        for target, names in imported(tree).items():
            assert layer_of(target) <= layer_of(name), f"{name} imports {target}, a higher layer"
            private = sorted(n for n in names if n.startswith("_"))
            assert not private, f"{name} uses private names of {target}: {private}"


def test_no_import_cycles():
    graph = {name: set(imported(tree)) for name, tree in modules().items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in graph[name]:
                visit(target, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_no_function_is_longer_than_the_limit():
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name}: {length} lines"


@pytest.mark.slow
def test_each_module_imports_first_on_its_own():
    """Each module imported before any other jaxpref module (third-party imports stay cached)."""
    script = (
        "import importlib, sys\n"
        f"for name in {sorted(modules())!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('jaxpref')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module('jaxpref.' + name)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
