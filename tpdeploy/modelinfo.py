"""`tpdeploy info FILE`: what an exported ONNX file or a built engine holds."""
from __future__ import annotations

import os

import onnx

from tpdeploy import onnx_op
from tpdeploy.errors import TpdeployError, one_line
from tpdeploy.runtime import default_backend


def load_onnx(path: str) -> onnx.ModelProto:
    if not os.path.isfile(path):
        raise TpdeployError(f"ONNX model not found: {path}")
    try:
        return onnx.load(path)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise TpdeployError(f"cannot read ONNX model {path}: {one_line(e)}") from None


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def describe_onnx(path: str) -> dict:
    proto = load_onnx(path)
    meta = {p.key.removeprefix("tpdeploy."): p.value for p in proto.metadata_props if p.key.startswith("tpdeploy.")}
    pools = [onnx_op.node_attributes(n) for n in proto.graph.node if n.op_type == onnx_op.OP_TYPE]
    inp, out = proto.graph.input[0], proto.graph.output[0]
    return {
        "file": path, "format": "onnx", "bytes": os.path.getsize(path),
        "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        "input": f"{inp.name} {onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name} {_dims(inp)}",
        "output": f"{out.name} {_dims(out)}",
        **meta,
        "token_pool_nodes": len(pools),
        "num_clusters": [p["num_clusters"] for p in pools],
        "local_functions": [f"{f.domain}::{f.name}" for f in proto.functions],
    }


def describe_file(path: str) -> dict:
    if default_backend(path) == "ort":
        return describe_onnx(path)
    from tpdeploy.engine import describe_engine
    return describe_engine(path)
