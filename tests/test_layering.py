"""The house plan, read from the code's imports (ast, not grep): a fan, not a tower.

A torch-free core (config, geometry, preprocessing, the nuScenes reader, evaluation, pictures, the
synthetic world) at the bottom; ``train`` and ``engine`` side by side on it; ``export`` between them
(it reads a checkpoint and writes the artefact the engine owns); ``ros2_node`` on ``engine``; the CLI
on top; ``plugins`` knowing nothing of their callers. Every import counts, also those inside
functions and under ``TYPE_CHECKING``: a lazy import is still an arrow.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> import name (pyproject's package-dir); the CLI lives inside fuller/.
FOLDERS = {"fuller": "fuller", "train": "fuller.train", "export": "fuller.export", "engine": "fuller.engine",
           "plugins": "fuller.plugins", "ros2_node": "fuller.ros2_node"}
CLI = ("fuller.cli", "fuller.__main__", "fuller.commands")
ALLOWED = {
    "core": {"core"},
    "plugins": {"plugins"},
    "train": {"core", "plugins", "train"},
    "engine": {"core", "plugins", "engine"},
    "export": {"core", "plugins", "train", "engine", "export"},
    "ros2_node": {"core", "engine", "ros2_node"},
    "cli": {"core", "plugins", "train", "engine", "export", "ros2_node", "cli"},
}


def layer(module: str) -> str | None:
    """The part a ``fuller`` module belongs to (None: not a fuller module, or the bare root)."""
    if module == "fuller" or not module.startswith("fuller."):
        return None
    if any(module == top or module.startswith(top + ".") for top in CLI):
        return "cli"
    part = module.split(".")[1]
    return part if part in {"train", "export", "engine", "plugins", "ros2_node"} else "core"


def modules(root: Path) -> dict[str, Path]:
    """Every Python module of the project under ``root``, by import name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if folder == "fuller" and parts[0] in FOLDERS:  # a subpackage folder inside fuller/ (none today)
                continue
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported fuller module) for every import statement of a module."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from package import module`` imports that module; ``from module import name`` the module.
            out += [(node.lineno, f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
                    for a in node.names]
    return sorted({(line, t) for line, t in out if t == "fuller" or t.startswith("fuller.")})


def violations(root: Path) -> list[str]:
    found = modules(root)
    known = set(found)
    bad = []
    for name, path in found.items():
        source = layer(name)
        for line, target in imports(name, path, known):
            wanted = layer(target)
            if wanted is not None and wanted not in ALLOWED[source]:
                bad.append(f"{path.relative_to(root)}:{line}: {source} imports {target} ({wanted})")
    return bad


def cycles(root: Path) -> list[list[str]]:
    """Groups of modules that import each other (strongly connected components of size > 1)."""
    found = modules(root)
    known = set(found)
    graph = {name: {t for _, t in imports(name, path, known) if t in known and t != name}
             for name, path in found.items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_every_layer_is_classified():
    names = modules(ROOT)
    assert {layer(n) for n in names if n != "fuller"} == set(ALLOWED)
    assert layer("fuller.config") == "core" and layer("fuller.data.sample") == "core"
    assert layer("fuller.commands.infer_cmd") == "cli" and layer("fuller.cli") == "cli"
    assert layer("fuller.engine.contract") == "engine" and layer("fuller.export.graph") == "export"


def test_imports_follow_the_fan():
    assert violations(ROOT) == []


def test_no_module_imports_itself_back():
    assert cycles(ROOT) == []


def test_the_checks_catch_a_wrong_arrow_and_a_cycle(tmp_path):
    """The checks themselves, on a copy of the tree with one arrow against the fan and one cycle."""
    for folder in FOLDERS:
        subprocess.run(["cp", "-r", str(ROOT / folder), str(tmp_path / folder)], check=True)
    (tmp_path / "engine" / "leak.py").write_text("def f():\n    from fuller.train.trainer import train\n")
    (tmp_path / "fuller" / "ping.py").write_text("from fuller import pong\n")
    (tmp_path / "fuller" / "pong.py").write_text("import fuller.ping\n")
    assert violations(tmp_path) == ["engine/leak.py:2: engine imports fuller.train.trainer (train)"]
    assert cycles(tmp_path) == [["fuller.ping", "fuller.pong"]]


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "triton", "spconv"):
            raise ImportError(f"{name} is blocked: the runtime path must not need it")
sys.meta_path.insert(0, Block())
from fuller.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_infer_on_onnx_runs_without_torch_or_triton(tmp_path, small_onnx, synth_root):
    """``fuller infer --model X.onnx`` in a process where torch, triton and spconv cannot be imported:
    it scores the split and writes the metrics (a vehicle installs the runtime only)."""
    import json

    done = subprocess.run([sys.executable, "-c", BLOCKER, "infer", "--model", str(small_onnx), "--data",
                           str(synth_root), "--split", "mini_val", "--out", str(tmp_path / "out"), "--pictures", "1"],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_samples"] > 0 and 0.0 <= metrics["detection"]["mAP"] <= 1.0
    assert 0.0 <= metrics["map"]["mean_iou_max"] <= 1.0
    assert len(list((tmp_path / "out" / "pictures").glob("*.png"))) == 1
