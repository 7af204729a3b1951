"""TensorRT plugins of ``fuller::SparseSites`` and ``fuller::SparseRulebook`` (``tensorrt.plugin``,
ahead-of-time Triton kernels).

:func:`register` registers, in namespace ``fuller`` (version "1"):

* ``SparseRulebook(coords, count, sites) -> neighbours``: (M, taps) int32, M the rows of ``sites``,
  an expression of the input shapes; kernel ``rulebook``.
* ``SparseSites(coords, count) -> (out_coords, out_count)`` for ``subm = 1``: the valid rows, M =
  count; kernel ``compact``.
* ``SparseSiteCounts(coords, count) -> block_counts`` and ``SparseStridedSites(coords, count,
  block_counts) -> (out_coords, out_count)``: a strided ``SparseSites`` (``subm = 0``) as TensorRT
  runs it, two plugins of one launch each (``triton_kernel.py`` says why one launch cannot do it).
  :func:`lower_strided_sites` (through ``fuller.plugins.prepare_for_tensorrt``) rewrites each such
  node into this pair before the graph reaches TensorRT's parser; the exported graph and ONNX
  Runtime keep the single node of the SPEC.

Each plugin's ``aot_impl`` compiles its kernel to PTX at engine build time (``triton_kernel.compile_ptx``);
TensorRT embeds the PTX and launches it itself, one launch per plugin, no host synchronisation, no
memory but the outputs TensorRT allocates. An engine holding these plugins runs in TensorRT's C++
runtime with no Python, torch or Triton (README of samples/python/quickly_deployable_plugins in
NVIDIA/TensorRT, "Loading and running a TRT engine containing an AOT plugin"; and ``aot_impl``'s
docstring in python/packaging/bindings_wheel/tensorrt/plugin/_lib.py: "Plugin attributes are not
serialized into the engine when using an AOT implementation").

The facts of ``tensorrt.plugin`` this relies on, read in python/packaging/bindings_wheel/tensorrt/plugin/
of NVIDIA/TensorRT:

* The data-dependent M of ``SparseSites`` and ``SparseStridedSites`` is a size tensor
  (``trtp.size_tensor(opt, upper_bound)``, _top_level.py): a 0-d int32 output (``SizeTensorDesc``,
  _tensor.py: ``ShapeExprs(0)``, ``trt.int32``) that must also be an output of the plugin, with
  ``out_capacity`` as upper bound and autotune extent. So in TensorRT ``out_count`` is 0-d, where
  the ONNX node declares (1,); the same int32 in memory, and the plugins that read a count accept
  either shape. Size tensor expressions admit no arithmetic (``SizeTensorShapeExpr._op`` raises);
  the consumer of the rows (``SparseRulebook``) sees M as an ordinary input dimension.
  ``_TemplateAOTPlugin`` shares ``get_output_shapes`` (and its size-tensor handling) with the
  just-in-time plugins (_plugin_class.py).
* ``get_launch_params`` (_plugin_class.py) calls ``aot_impl`` with every attribute positionally
  (``_, val = zip(*self.attrs.items())``), in the order of the plugin creator's fields, which is the
  order of the ``register`` function's parameters (the ONNX parser's ``loadFields`` walks the
  creator's field names); so each ``aot_impl`` takes all attributes in registration order. Extra
  kernel arguments must each be a ``trtp.SymInt32`` (checked there), launch parameters a
  ``KernelLaunchParams`` of symbolic expressions of the input shapes.
* There is no workspace for ahead-of-time plugins (``IPluginV3QuickAOTBuild`` in
  include/impl/NvInferPythonPlugin.h has ``getLaunchParams`` and ``getKernel`` only).
* No ``@trtp.autotune``: without one TensorRT assumes the declared types and linear formats
  (``autotune``'s docstring, _lib.py) and sets tactic 0 (NvInferRuntime.h, ``setTactic``: "If no
  custom tactics were advertised, this will have a value of 0").

How TensorRT's ONNX parser finds them: by op_type, the STRING attribute ``plugin_namespace="fuller"``
and ``plugin_version`` (default "1"); the ONNX domain is not used; the INT attribute ``aot=1``
requests the ahead-of-time implementation (``QuickPluginCreationRequest::kSTRICT_AOT``); INT
attributes reach the plugin as int32 fields (importerUtils.cpp and onnxOpImporters.cpp of
onnx/onnx-tensorrt). Importing this module and :func:`register` need neither torch nor Triton
(the runtime path); Triton is imported by the ``aot_impl`` bodies, at engine build.
"""
from typing import Tuple, Union

from .reference import ConvGeometry

NAMESPACE = "fuller"
SITES, COUNTS, STRIDED, RULEBOOK = "SparseSites", "SparseSiteCounts", "SparseStridedSites", "SparseRulebook"
_registered = False


def _geometry(kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
              shape_x, shape_y, shape_z, subm=0, out_capacity=0) -> ConvGeometry:
    """The layer geometry from a plugin's attributes (validated; errors name the attribute)."""
    return ConvGeometry((kernel_x, kernel_y, kernel_z), (stride_x, stride_y, stride_z),
                        (padding_x, padding_y, padding_z), (shape_x, shape_y, shape_z), bool(subm), out_capacity)


def lower_strided_sites(model):
    """(a copy of the ONNX ``model`` with every ``SparseSites`` node of ``subm = 0`` replaced by
    ``SparseSiteCounts`` (its inputs and geometry) feeding ``SparseStridedSites`` (the same inputs
    plus the block counts, the same outputs), the number of nodes replaced): the form TensorRT runs
    (module docstring). For the engine build, after any ONNX checks: the two nodes have no ONNX
    schema."""
    import onnx
    from onnx import helper

    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain != NAMESPACE or node.op_type != SITES or attrs.get("subm", 1):
            nodes.append(node)
            continue
        geom = ConvGeometry.from_attributes(**{k: v for k, v in attrs.items() if isinstance(v, int)})
        name = node.name or node.output[0]
        counts = f"{node.output[0]}/block_counts"
        plugin = {"plugin_namespace": NAMESPACE, "aot": 1}
        nodes.append(helper.make_node(COUNTS, list(node.input), [counts], name=f"{name}/counts", domain=NAMESPACE,
                                      **geom.attributes(sites=False), **plugin))
        nodes.append(helper.make_node(STRIDED, [*node.input, counts], list(node.output), name=f"{name}/sites",
                                      domain=NAMESPACE, **geom.attributes(sites=False),
                                      out_capacity=geom.out_capacity, **plugin))
    del lowered.graph.node[:]
    lowered.graph.node.extend(nodes)
    return lowered, len(nodes) - len(model.graph.node)


def register() -> None:
    """Register the four plugins with TensorRT's plugin registry, once per process (later calls do
    nothing). Needs ``tensorrt`` with ahead-of-time plugin support; the engine build also needs Triton."""
    global _registered
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    if not hasattr(trtp, "aot_impl"):
        raise RuntimeError(f"{NAMESPACE}::{SITES}: TensorRT {trt.__version__} has no ahead-of-time Python plugins "
                           "(tensorrt.plugin.aot_impl); install a newer TensorRT 10 or 11")
    AotResult = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]

    def check_int32(plugin: str, **descs) -> None:
        for name, desc in descs.items():
            if desc.dtype != trt.int32:
                raise ValueError(f"{NAMESPACE}::{plugin}: {name}: expected int32, got {desc.dtype}")

    def launch(kernel: str, geom: ConvGeometry, programs, scalars) -> AotResult:
        """``aot_impl``'s answer: ``kernel`` compiled for the layer, ``programs`` blocks (a shape
        expression, at least 1), the int32 ``scalars`` in the kernel's order."""
        from .triton_kernel import compile_ptx

        ptx = compile_ptx(kernel, geom)
        params = trtp.KernelLaunchParams()
        params.grid_x = trtp.max(programs, 1)
        params.block_x = ptx.threads
        params.shared_mem = ptx.shared
        return ptx.name, ptx.ptx, params, trtp.SymIntExprs.from_tuple([trtp.SymInt32(s) for s in scalars])

    def sites_outputs(geom: ConvGeometry) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        """(M, 4) int32 rows and M itself, the size tensor bounded by ``out_capacity``."""
        rows = trtp.size_tensor(trtp.ShapeExpr(geom.out_capacity), trtp.ShapeExpr(geom.out_capacity))
        return trtp.from_shape_expr((rows.expr(), 4), dtype=trt.int32), rows

    @trtp.register(f"{NAMESPACE}::{SITES}")
    def sites_desc(coords: trtp.TensorDesc, count: trtp.TensorDesc, kernel_x: int, kernel_y: int, kernel_z: int,
                   stride_x: int, stride_y: int, stride_z: int, padding_x: int, padding_y: int, padding_z: int,
                   shape_x: int, shape_y: int, shape_z: int, subm: int,
                   out_capacity: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        check_int32(SITES, coords=coords, count=count)
        geom = _geometry(kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
                         shape_x, shape_y, shape_z, subm, out_capacity)
        if not geom.subm:
            raise ValueError(f"{NAMESPACE}::{SITES}: subm = 0 runs in TensorRT as {COUNTS} + {STRIDED}; build the "
                             "engine from fuller.plugins.prepare_for_tensorrt(model)")
        return sites_outputs(geom)

    @trtp.aot_impl(f"{NAMESPACE}::{SITES}")
    def sites_aot(coords: trtp.TensorDesc, count: trtp.TensorDesc, kernel_x: int, kernel_y: int, kernel_z: int,
                  stride_x: int, stride_y: int, stride_z: int, padding_x: int, padding_y: int, padding_z: int,
                  shape_x: int, shape_y: int, shape_z: int, subm: int, out_capacity: int,
                  outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:
        from .triton_kernel import BLOCK_COPY

        geom = _geometry(kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
                         shape_x, shape_y, shape_z, subm, out_capacity)
        rows = coords.shape_expr[0]
        return launch("compact", geom, trtp.cdiv(rows, BLOCK_COPY), (rows,))

    @trtp.register(f"{NAMESPACE}::{COUNTS}")
    def counts_desc(coords: trtp.TensorDesc, count: trtp.TensorDesc, kernel_x: int, kernel_y: int, kernel_z: int,
                    stride_x: int, stride_y: int, stride_z: int, padding_x: int, padding_y: int, padding_z: int,
                    shape_x: int, shape_y: int, shape_z: int) -> trtp.TensorDesc:
        from .triton_kernel import BLOCK_ROWS

        check_int32(COUNTS, coords=coords, count=count)
        _geometry(kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
                  shape_x, shape_y, shape_z)
        return trtp.from_shape_expr((trtp.cdiv(coords.shape_expr[0], BLOCK_ROWS),), dtype=trt.int32)

    @trtp.aot_impl(f"{NAMESPACE}::{COUNTS}")
    def counts_aot(coords: trtp.TensorDesc, count: trtp.TensorDesc, kernel_x: int, kernel_y: int, kernel_z: int,
                   stride_x: int, stride_y: int, stride_z: int, padding_x: int, padding_y: int, padding_z: int,
                   shape_x: int, shape_y: int, shape_z: int, outputs: Tuple[trtp.TensorDesc],
                   tactic: int) -> AotResult:
        geom = _geometry(kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
                         shape_x, shape_y, shape_z)
        from .triton_kernel import BLOCK_ROWS

        rows = coords.shape_expr[0]
        return launch("site_counts", geom, trtp.cdiv(rows, BLOCK_ROWS), (rows,))

    @trtp.register(f"{NAMESPACE}::{STRIDED}")
    def strided_desc(coords: trtp.TensorDesc, count: trtp.TensorDesc, block_counts: trtp.TensorDesc, kernel_x: int,
                     kernel_y: int, kernel_z: int, stride_x: int, stride_y: int, stride_z: int, padding_x: int,
                     padding_y: int, padding_z: int, shape_x: int, shape_y: int, shape_z: int,
                     out_capacity: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        check_int32(STRIDED, coords=coords, count=count, block_counts=block_counts)
        return sites_outputs(_geometry(kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x,
                                       padding_y, padding_z, shape_x, shape_y, shape_z, 0, out_capacity))

    @trtp.aot_impl(f"{NAMESPACE}::{STRIDED}")
    def strided_aot(coords: trtp.TensorDesc, count: trtp.TensorDesc, block_counts: trtp.TensorDesc, kernel_x: int,
                    kernel_y: int, kernel_z: int, stride_x: int, stride_y: int, stride_z: int, padding_x: int,
                    padding_y: int, padding_z: int, shape_x: int, shape_y: int, shape_z: int, out_capacity: int,
                    outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:
        geom = _geometry(kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
                         shape_x, shape_y, shape_z, 0, out_capacity)
        return launch("strided_sites", geom, block_counts.shape_expr[0], (coords.shape_expr[0],))

    @trtp.register(f"{NAMESPACE}::{RULEBOOK}")
    def rulebook_desc(coords: trtp.TensorDesc, count: trtp.TensorDesc, sites: trtp.TensorDesc, kernel_x: int,
                      kernel_y: int, kernel_z: int, stride_x: int, stride_y: int, stride_z: int, padding_x: int,
                      padding_y: int, padding_z: int, shape_x: int, shape_y: int, shape_z: int) -> trtp.TensorDesc:
        check_int32(RULEBOOK, coords=coords, count=count, sites=sites)
        geom = _geometry(kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
                         shape_x, shape_y, shape_z)
        return trtp.from_shape_expr((sites.shape_expr[0], geom.taps), dtype=trt.int32)

    @trtp.aot_impl(f"{NAMESPACE}::{RULEBOOK}")
    def rulebook_aot(coords: trtp.TensorDesc, count: trtp.TensorDesc, sites: trtp.TensorDesc, kernel_x: int,
                     kernel_y: int, kernel_z: int, stride_x: int, stride_y: int, stride_z: int, padding_x: int,
                     padding_y: int, padding_z: int, shape_x: int, shape_y: int, shape_z: int,
                     outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:
        from .triton_kernel import BLOCK_SITES

        geom = _geometry(kernel_x, kernel_y, kernel_z, stride_x, stride_y, stride_z, padding_x, padding_y, padding_z,
                         shape_x, shape_y, shape_z)
        n_sites = sites.shape_expr[0]
        return launch("rulebook", geom, trtp.cdiv(n_sites, BLOCK_SITES), (coords.shape_expr[0], n_sites))

    _registered = True
