"""`tpdeploy info FILE`: what an exported ONNX file or a built engine holds (from the file alone: no PyTorch,
no TensorRT)."""
from __future__ import annotations

import dataclasses
import os

from tpdeploy.artifacts import onnx_file
from tpdeploy.artifacts.engine_file import read_sidecar
from tpdeploy.artifacts.formats import ONNX, file_format
from tpdeploy.artifacts.onnx_file import OnnxFile


def _recipe_fields(recipe) -> dict:
    if recipe is None:
        return {"recipe": "none (not exported by tpdeploy)"}
    d = dataclasses.asdict(recipe)
    d["tokens"] = list(recipe.tokens)
    d["data_config"] = recipe.data_config.describe()
    d["weights"] = recipe.weights
    return d


def describe_file(path: str) -> dict:
    info = {"file": path}
    if file_format(path) == ONNX:
        model = OnnxFile.open(path, load_external_data=False)
        nodes = model.token_pool_nodes
        info.update(format="onnx", bytes=os.path.getsize(path), opset=onnx_file.opset(model.proto),
                    ir_version=model.proto.ir_version, io=model.spec.describe(), **_recipe_fields(model.recipe),
                    token_pool_nodes=len(nodes), num_clusters=[n.get("num_clusters") for n in nodes],
                    local_functions=[f"{f.domain}::{f.name}" for f in model.proto.functions])
        return info
    sidecar = read_sidecar(path)
    info.update(format="tensorrt", bytes=os.path.getsize(path), tensorrt_version=sidecar.tensorrt_version,
                gpu=sidecar.gpu, compute_capability=sidecar.compute_capability, io=sidecar.spec.describe(),
                plugin="TokenPool plugin (sha256 " + sidecar.plugin_sha256[:16] + "...)" if sidecar.plugin_sha256
                else "none (TokenPool inlined)", build=sidecar.build, **_recipe_fields(sidecar.recipe))
    return info
