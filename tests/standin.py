"""Small stand-ins for exported models and built engines, for tests of what tpdeploy decides from a file's
interface (the real exports are in test_export.py; real engines need TensorRT and a GPU)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tpdeploy.artifacts.recipe import DataConfig, Recipe
from tpdeploy.convert import engine
from tpdeploy.tokenpool import onnx_function

ITERATIONS = 3  # of every stand-in TokenPool node
TYPES = {"float32": (TensorProto.FLOAT, np.float32), "float16": (TensorProto.FLOAT16, np.float16)}


def standin_onnx(
    path, batch="batch", dtype="float32", pools=((150, "kmedoids"),), classes=10, recipe=True, size=224, tokens=196
):
    """images [B, 3, size, size] -> `tokens` tokens of 3 * size² / tokens channels (768 by default) -> TokenPool
    nodes -> mean -> logits [B, classes]."""
    elem, npd = TYPES[dtype]
    channels = 3 * size * size // tokens
    nodes = [
        helper.make_node("Reshape", ["images", "tokens_shape"], ["x"]),
        helper.make_node("ReduceSumSquare", ["x", "axis2"], ["w"], keepdims=0),
    ]
    x = "x"
    for i, (k, mode) in enumerate(pools):
        nodes.append(
            onnx_function.make_node(
                x, "w" if i == 0 else f"w{i}", f"y{i}", k, ITERATIONS, mode, True, name=f"TokenPool_{i}"
            )
        )
        x = f"y{i}"
        nodes.append(helper.make_node("ReduceSumSquare", [x, "axis2"], [f"w{i + 1}"], keepdims=0))
    nodes += [
        helper.make_node("ReduceMean", [x, "axis1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, tokens, channels], np.int64), "tokens_shape"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.random.default_rng(0).normal(size=(channels, classes)).astype(npd), "head"),
    ]
    graph = helper.make_graph(
        nodes,
        "standin",
        [helper.make_tensor_value_info("images", elem, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", elem, [batch, classes])],
        inits,
        value_info=[helper.make_tensor_value_info("x", elem, [batch, tokens, channels])],
    )
    modes = {mode for _, mode in pools}
    functions = [onnx_function.function_proto(20, modes.pop(), ITERATIONS)] if len(modes) == 1 else []
    model = helper.make_model(
        graph, functions=functions, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("tpdeploy", 1)]
    )
    if recipe:
        from tpdeploy.artifacts import onnx_file

        onnx_file.write_recipe(
            model,
            Recipe(
                "deit_small",
                "wkmedoids",
                3,
                (tokens,) * 12,
                "fp32" if dtype == "float32" else "fp16",
                classes,
                DataConfig(input_size=size),
                seed=0,
                tpdeploy_version="test",
            ),
        )
    onnx.save(model, str(path))
    return str(path)


def standin_engine(folder, onnx_path, trt_version="10.8.0.43", cc="90", name="m.plan", **plan_args):
    """A fake engine file with the sidecar `build-engine` would write beside it for `onnx_path`."""
    plan = engine.plan_build(onnx_path, str(folder / name), **plan_args)
    (folder / name).write_bytes(b"fake serialized engine " + name.encode())
    sidecar = engine.make_sidecar(plan, trt_version, "NVIDIA H100 80GB HBM3", cc)
    from tpdeploy.artifacts.engine_file import write_sidecar

    write_sidecar(plan.output, sidecar)
    return str(folder / name), sidecar
