"""The TensorRT plugins' Python side, without TensorRT: the runtime path needs neither torch nor
Triton, the plugins' attributes are the ONNX nodes', the strided ``SparseSites`` lowering, and the
removal of Triton's scratch parameters from the PTX.

The plugins are ahead-of-time: an engine runs in TensorRT's runtime with no Python at all, and
what Python a process runs around it (importing the plugin modules, registering the plugins) must
not pull in torch or Triton, which a vehicle does not install. Triton is for the engine build, inside
the callbacks TensorRT makes while building (the ``@trtp.register`` / ``@trtp.aot_impl`` functions).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuller.plugins import OP_PACKAGES
from fuller.plugins.triton_aot import entry_parameters, strip_trailing_parameters

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "triton")

RUNTIME_PROBE = """
import importlib, importlib.abc, json, sys

attempts = []


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is blocked: the TensorRT runtime path must not need it")


sys.meta_path.insert(0, Block())
import fuller.engine.nvidia
import fuller.plugins

for package in fuller.plugins.OP_PACKAGES:
    importlib.import_module(f"fuller.plugins.{package}.trt_plugin")
try:
    fuller.plugins.register_tensorrt_plugins()
    registered = "registered"
except ImportError as exc:
    registered = f"ImportError: {exc.name}"
print(json.dumps({"attempts": attempts, "registered": registered,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_runtime_path_imports_neither_torch_nor_triton():
    """In a process where importing torch or triton is recorded and refused: the plugin modules and
    the engine's TensorRT helpers import, and registering the plugins tries neither. Without
    TensorRT the registration stops at ``import tensorrt`` and nowhere else; with it, it completes."""
    probe = f"BLOCKED = {BLOCKED!r}\n" + RUNTIME_PROBE
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [] and report["loaded"] == []
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None
    assert report["registered"] == ("registered" if has_tensorrt else "ImportError: tensorrt")


def _build_time_only(path: Path) -> list[str]:
    """Imports of torch, Triton or the kernel modules that run when the module is imported or its
    ``register()`` is called: anywhere but inside a function nested in ``register`` (a callback
    TensorRT makes while building)."""
    bad = []

    def imported(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        return [("." * node.level) + (node.module or "")]

    def visit(node, stack: tuple[str, ...]) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            build_callback = len(stack) >= 2 and stack[0] == "register"
            for name in imported(node):
                heavy = name.split(".")[0] in BLOCKED or name.lstrip(".") in ("triton_kernel", "triton_aot")
                if heavy and not build_callback:
                    bad.append(f"{path.name}:{node.lineno}: {name} in {'.'.join(stack) or 'the module'}")
        inner = stack + (node.name,) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else stack
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), ())
    return bad


@pytest.mark.parametrize("package", OP_PACKAGES)
def test_plugins_import_triton_only_in_build_callbacks(package):
    """The source agrees with the probe above on every path, also those a machine without TensorRT
    cannot run: the kernels (and Triton with them) are imported only by the build callbacks."""
    assert _build_time_only(ROOT / "plugins" / package / "trt_plugin.py") == []


def _registered_attributes(package: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per plugin id, the attribute parameters of its ``@trtp.register`` and ``@trtp.aot_impl``
    functions, read from the source (the decorator's id evaluated in the module's namespace)."""
    module = importlib.import_module(f"fuller.plugins.{package}.trt_plugin")
    tree = ast.parse((ROOT / "plugins" / package / "trt_plugin.py").read_text())
    found: dict[str, dict[str, list[str]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute) and deco.func.attr in (
                    "register", "aot_impl"):
                plugin = eval(compile(ast.Expression(deco.args[0]), "<id>", "eval"), vars(module))
                names = [a.arg for a in node.args.args
                         if not (isinstance(a.annotation, ast.Attribute) and a.annotation.attr == "TensorDesc")]
                found.setdefault(plugin, {})[deco.func.attr] = [n for n in names if n not in ("outputs", "tactic")]
    return {plugin: (kinds["register"], kinds["aot_impl"]) for plugin, kinds in found.items()}


def test_plugin_attributes_are_the_onnx_nodes():
    """TensorRT's parser hands a plugin the node attributes its creator declares (the
    ``@trtp.register`` parameters), and ``aot_impl`` receives all of them positionally in that
    order: so each plugin declares exactly its node's attributes, and its ``aot_impl`` the same
    ones in the same order."""
    from fuller.plugins.bev_pool.schema import ATTRIBUTES as BEV_ATTRIBUTES
    from fuller.plugins.sparse_conv.schema import RULEBOOK_ATTRIBUTES, SITES_ATTRIBUTES

    geometry = list(RULEBOOK_ATTRIBUTES)
    want = {"fuller::BevPool": list(BEV_ATTRIBUTES), "fuller::SparseSites": list(SITES_ATTRIBUTES),
            "fuller::SparseRulebook": geometry, "fuller::SparseSiteCounts": geometry,
            "fuller::SparseStridedSites": [*geometry, "out_capacity"]}
    got = {**_registered_attributes("bev_pool"), **_registered_attributes("sparse_conv")}
    assert set(got) == set(want)
    for plugin, (register, aot) in got.items():
        assert register == aot == want[plugin], plugin


def test_strided_sites_lowering():
    """``prepare_for_tensorrt``: each strided SparseSites becomes SparseSiteCounts feeding
    SparseStridedSites with the same inputs and outputs and the node's geometry; submanifold
    SparseSites, the rulebook and standard nodes are kept; the given model is not changed."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from fuller.plugins import prepare_for_tensorrt
    from fuller.plugins.sparse_conv.reference import ConvGeometry

    subm = ConvGeometry((3, 3, 3), (1, 1, 1), (1, 1, 1), (9, 7, 5), True, 30)
    down = ConvGeometry((3, 3, 3), (2, 2, 1), (1, 1, 0), (9, 7, 5), False, 100)
    trt = {"plugin_namespace": "fuller", "aot": 1}
    nodes = [helper.make_node("SparseSites", ["c", "n"], ["s0", "k0"], "sub", domain="fuller", **subm.attributes(),
                              **trt),
             helper.make_node("SparseSites", ["s0", "k0"], ["s1", "k1"], "down", domain="fuller", **down.attributes(),
                              **trt),
             helper.make_node("SparseRulebook", ["s0", "k0", "s1"], ["nb"], "rb", domain="fuller",
                              **down.attributes(sites=False), **trt),
             helper.make_node("Identity", ["nb"], ["out"], "id")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("c", TensorProto.INT32, [30, 4]),
                                           helper.make_tensor_value_info("n", TensorProto.INT32, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.INT32, None)])
    model = helper.make_model(graph)
    before = model.SerializeToString()
    lowered, rewritten = prepare_for_tensorrt(model)
    assert rewritten == 1 and model.SerializeToString() == before
    got = [(n.op_type, list(n.input), list(n.output)) for n in lowered.graph.node]
    assert got == [("SparseSites", ["c", "n"], ["s0", "k0"]),
                   ("SparseSiteCounts", ["s0", "k0"], ["s1/block_counts"]),
                   ("SparseStridedSites", ["s0", "k0", "s1/block_counts"], ["s1", "k1"]),
                   ("SparseRulebook", ["s0", "k0", "s1"], ["nb"]), ("Identity", ["nb"], ["out"])]
    attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in lowered.graph.node[1:3]]
    assert attrs[0] == {**down.attributes(sites=False), "plugin_namespace": b"fuller", "aot": 1}
    assert attrs[1] == {**attrs[0], "out_capacity": 100}
    assert all(n.domain == "fuller" for n in lowered.graph.node[:4])
    assert onnx.ModelProto.FromString(lowered.SerializeToString()) == lowered


PTX = """
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .u64 .ptr .global .align 1 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3,
\t.param .u64 .ptr .global .align 1 k_param_4
)
{
\tld.param.u64 \t%rd1, [k_param_0];
\tld.param.u32 \t%r1, [k_param_1];
\tld.param.u64 \t%rd2, [k_param_2];
\tret;
}
"""


def test_trailing_parameters_removed_only_when_unused():
    """The kernel's own parameters stay, in order, with the body untouched; the trailing ones go
    only if nothing but their declaration names them."""
    stripped = strip_trailing_parameters(PTX, "k", 3)
    assert [p.split()[-1] for p in entry_parameters(stripped, "k")] == ["k_param_0", "k_param_1", "k_param_2"]
    assert stripped[stripped.index("{"):] == PTX[PTX.index("{"):]
    assert strip_trailing_parameters(PTX, "k", 5) == PTX
    with pytest.raises(ValueError, match="k_param_2"):
        strip_trailing_parameters(PTX, "k", 2)
    with pytest.raises(ValueError, match="fewer"):
        strip_trailing_parameters(PTX, "k", 6)
