"""An exported ONNX file: loading it with clear errors, its input/output contract, its TokenPool nodes and
the recipe in its metadata. Every stage reads ONNX files through `OnnxFile.open`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx
from onnx import helper

from tpdeploy.artifacts.recipe import DTYPES, RECIPE_KEY, Recipe
from tpdeploy.errors import UserError, one_line
from tpdeploy.tokenpool import definition as tokenpool

FLOAT_TYPES = ("float32", "float16")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name: "float32" | "float16"
    shape: tuple  # ints; None where dynamic


@dataclass(frozen=True)
class ModelSpec:
    """What a model file takes and gives: images [B, 3, S, S] -> logits [B, classes]."""

    input: TensorSpec
    output: TensorSpec
    min_batch: int = 1
    max_batch: int | None = None  # None: any batch

    @property
    def image_size(self) -> int:
        return self.input.shape[-1]

    @property
    def num_classes(self) -> int:
        return self.output.shape[-1]

    @property
    def fixed_batch(self) -> int | None:
        return self.min_batch if self.min_batch == self.max_batch else None

    def to_dict(self) -> dict:
        return {
            "input": {"name": self.input.name, "dtype": self.input.dtype, "shape": list(self.input.shape)},
            "output": {"name": self.output.name, "dtype": self.output.dtype, "shape": list(self.output.shape)},
            "min_batch": self.min_batch,
            "max_batch": self.max_batch,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "the spec") -> ModelSpec:
        """The spec a sidecar records, checked as a file's own is (float images [B, 3, S, S] -> logits, a batch range
        that is one)."""

        def t(e, what):
            shape = e["shape"]
            if not isinstance(shape, list) or not all(_dimension(x) for x in shape):
                raise ValueError(f"{what} shape {shape!r} is not a list of sizes")
            return TensorSpec(str(e["name"]), str(e["dtype"]), tuple(shape))

        lo, hi = d["min_batch"], d["max_batch"]
        if not _dimension(lo) or lo is None or not _dimension(hi):
            raise ValueError(f"batch range {lo!r}..{hi!r} is not made of sizes")
        spec = cls(t(d["input"], "input"), t(d["output"], "output"), lo, hi)
        spec.check(source)
        return spec

    def check(self, source: str) -> None:
        """UserError unless this is float images [B, 3, S, S] -> float logits [B, classes] over a batch range."""
        inp, out = self.input, self.output
        for what, t in (("input", inp), ("output", out)):
            if t.dtype not in FLOAT_TYPES:
                raise UserError(
                    f"{source}: {what} {t.name!r} is {t.dtype}; a tpdeploy model takes and gives float32 or float16"
                )
        if len(inp.shape) != 4 or inp.shape[1] != 3 or inp.shape[2] is None or inp.shape[2] != inp.shape[3]:
            raise UserError(f"{source}: input {inp.name!r} has shape {list(inp.shape)}; expected images [B, 3, S, S]")
        if len(out.shape) != 2 or out.shape[1] is None:
            raise UserError(f"{source}: output {out.name!r} has shape {list(out.shape)}; expected logits [B, classes]")
        if self.min_batch < 1 or (self.max_batch is not None and self.max_batch < self.min_batch):
            raise UserError(f"{source}: batch range {self.min_batch}..{self.max_batch} is empty")

    def check_recipe(
        self,
        recipe: Recipe | None,
        source: str,
        token_pool_clusters: list[int] | None = None,
        dequantize_nodes: int | None = None,
    ) -> None:
        """UserError where the recipe contradicts the file it is in: image size, classes, dtype, and (for an ONNX
        file, whose nodes are known) the TokenPool nodes its schedule implies and the Q/DQ layers its quantization
        record implies."""
        if recipe is None:
            return
        wanted = []
        if recipe.data_config.input_size != self.image_size:
            wanted.append(f"its recipe's images are {recipe.data_config.input_size} px, its input {self.image_size} px")
        if recipe.num_classes != self.num_classes:
            wanted.append(f"its recipe has {recipe.num_classes} classes, its output {self.num_classes} logits")
        if DTYPES[recipe.dtype] != self.input.dtype:
            wanted.append(f"its recipe says {recipe.dtype}, its input is {self.input.dtype}")
        if token_pool_clusters is not None and token_pool_clusters != recipe.token_pool_clusters:
            wanted.append(
                f"its recipe ({recipe.method}, tokens {list(recipe.tokens)}) means TokenPool nodes of "
                f"{recipe.token_pool_clusters or 'none'} clusters, the graph has {token_pool_clusters or 'none'}"
            )
        if dequantize_nodes == 0 and recipe.quantization is not None:
            wanted.append(f"its recipe says {recipe.quantization.precision} Q/DQ, the graph has no DequantizeLinear")
        if wanted:
            raise UserError(f"{source} contradicts itself: {'; '.join(wanted)}")

    def describe(self) -> str:
        batch = self.fixed_batch or f"{self.min_batch}..{self.max_batch or 'any'}"

        def dims(s):
            return ", ".join("B" if d is None else str(d) for d in s)

        return (
            f"{self.input.name} {self.input.dtype} [{dims(self.input.shape)}] -> {self.output.name} "
            f"{self.output.dtype} [{dims(self.output.shape)}], batch {batch}"
        )


def load_onnx(path: str, load_external_data: bool = True) -> onnx.ModelProto:
    """The model proto; UserError for a missing, empty or corrupt file."""
    if not os.path.isfile(path):
        raise UserError(f"ONNX model not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty (0 bytes), not an ONNX model")
    try:
        proto = onnx.load(path, load_external_data=load_external_data)
    except Exception as e:  # protobuf raises several types for a corrupt file
        raise UserError(f"cannot read ONNX model {path}: {one_line(e)}") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise UserError(f"{path} is not an ONNX model (no graph)")
    return proto


def _tensor(value_info, what: str, path: str) -> TensorSpec:
    t = value_info.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "undefined"
    if dtype not in FLOAT_TYPES:
        raise UserError(
            f"{path}: {what} {value_info.name!r} is {dtype}; a tpdeploy model takes and gives float32 or float16"
        )
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return TensorSpec(value_info.name, dtype, shape)


def _dimension(x) -> bool:
    """A size in a recorded shape: a positive integer, or None (dynamic)."""
    return x is None or (isinstance(x, int) and not isinstance(x, bool) and x >= 1)


def model_spec(proto: onnx.ModelProto, path: str) -> ModelSpec:
    """Images [B, 3, S, S] float -> logits [B, classes] float, from the graph's inputs and outputs."""
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise UserError(
            f"{path}: expected one image input and one logits output, found {len(inputs)} inputs "
            f"and {len(proto.graph.output)} outputs"
        )
    inp, out = _tensor(inputs[0], "input", path), _tensor(proto.graph.output[0], "output", path)
    spec = ModelSpec(inp, out, inp.shape[0] or 1 if inp.shape else 1, inp.shape[0] if inp.shape else None)
    spec.check(path)
    return spec


def token_pool_nodes(proto: onnx.ModelProto) -> list[dict]:
    """Each TokenPool node of the main graph: its name, its attributes (strings decoded) and, as "x_shape", the
    shape of its input X [B, N, C] where the file's value_info records it (None for a dynamic or unknown size)."""
    shapes = {v.name: v.type.tensor_type.shape for v in proto.graph.value_info}
    nodes = []
    for node in proto.graph.node:
        if node.op_type == tokenpool.OP_TYPE and node.domain == tokenpool.DOMAIN:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            shape = shapes.get(node.input[0])
            x_shape = None if shape is None else [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
            nodes.append(
                {
                    "name": node.name,
                    **{k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()},
                    "x_shape": x_shape,
                }
            )
    return nodes


def read_recipe(proto: onnx.ModelProto, path: str) -> Recipe | None:
    """The recipe tpdeploy wrote at export; None for an ONNX file tpdeploy did not export."""
    text = next((p.value for p in proto.metadata_props if p.key == RECIPE_KEY), None)
    return None if text is None else Recipe.from_json(text, path)


def write_recipe(proto: onnx.ModelProto, recipe: Recipe) -> None:
    kept = [p for p in proto.metadata_props if not p.key.startswith("tpdeploy.")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=RECIPE_KEY, value=recipe.to_json())


def opset(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


@dataclass
class OnnxFile:
    """An ONNX model file as tpdeploy reads it."""

    path: str
    proto: onnx.ModelProto
    spec: ModelSpec
    recipe: Recipe | None

    @classmethod
    def open(cls, path: str, load_external_data: bool = True) -> OnnxFile:
        proto = load_onnx(path, load_external_data)
        spec, recipe = model_spec(proto, path), read_recipe(proto, path)
        spec.check_recipe(
            recipe,
            path,
            [n.get("num_clusters") for n in token_pool_nodes(proto)],
            sum(n.op_type == "DequantizeLinear" for n in proto.graph.node),
        )
        return cls(path, proto, spec, recipe)

    def require_recipe(self, purpose: str) -> Recipe:
        if self.recipe is None:
            raise UserError(
                f"{self.path} was not exported by tpdeploy (no {RECIPE_KEY} metadata): {purpose} needs "
                f"the export recipe"
            )
        return self.recipe

    @property
    def token_pool_nodes(self) -> list[dict]:
        return token_pool_nodes(self.proto)

    def external_data_files(self) -> list[str]:
        """Paths (relative to the model's folder) of the external-data files its tensors are stored in."""
        files = set()
        for t in _graph_tensors(self.proto.graph):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                files.update(e.value for e in t.external_data if e.key == "location")
        return sorted(files)


def _graph_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)
