"""float32 ONNX -> float16 ONNX, keeping the contract's float32 islands: what `export --dtype fp16` builds,
made from the exported file alone (no PyTorch, no checkpoint) for `build-engine --fp16`.

Pooling decisions follow the significance sums, and fp16 rounding would reorder tokens of nearly equal
significance, so at every pooling step the attention logits, their softmax and the significance (the
TokenPool node's W input) stay float32, exactly as the exported fp16 graph computes them
(`tpdeploy.model.vit.Attention`): q and k are cast up, scaled, multiplied, soft-maxed and summed in float32; the
probabilities are cast down for the product with v. Everything else becomes float16: weights, constants,
casts, the graph's input and output.

Why not onnxconverter-common's `convert_float_to_float16`: it needs the island's node names anyway (they are
found here by walking back from each W input), it does not convert inside model-local functions (the
TokenPool function is dtype-generic, so none is needed), and it would add a dependency that pins
protobuf to the deployment install. The pass is small and knows exactly the one graph shape it serves.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tpdeploy.artifacts import onnx_file
from tpdeploy.errors import UserError, one_line
from tpdeploy.tokenpool import definition as tokenpool

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_OPERAND_OPS = ("Mul", "Div", "Transpose")  # scaling and layout between q/k and the logits MatMul
_TYPED_OPS = (
    "EyeLike",
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
)  # ops with a dtype attribute this pass does not rewrite


def _producers(graph) -> dict[str, int]:
    return {out: i for i, node in enumerate(graph.node) for out in node.output}


def _constant_names(graph) -> set[str]:
    return {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def float32_islands(graph, purpose: str = "convert to float16") -> set[int]:
    """Indices of the nodes that compute in float32: for each TokenPool node, the chain from its W input back
    through the softmax to the logits MatMul, and the scaling/transposes of that MatMul's operands. `purpose`
    says in an error what could not be done."""
    producer, constants = _producers(graph), _constant_names(graph)
    island: set[int] = set()

    def operand(name: str) -> None:
        while name in producer and graph.node[producer[name]].op_type in _OPERAND_OPS:
            node = graph.node[producer[name]]
            island.add(producer[name])
            data = [i for i in node.input if i not in constants]
            if len(data) != 1:
                return
            name = data[0]

    for pool in graph.node:
        if pool.op_type != tokenpool.OP_TYPE or pool.domain != tokenpool.DOMAIN:
            continue
        stack = [pool.input[1]]
        while stack:
            name = stack.pop()
            if name not in producer or producer[name] in island or name in constants:
                continue
            i = producer[name]
            node = graph.node[i]
            if node.op_type not in ("Slice", "ReduceSum", "Softmax", "MatMul"):
                raise UserError(
                    f"cannot {purpose}: the significance of {pool.name} comes from a "
                    f"{node.op_type} node ({node.name}), not from an attention softmax"
                )
            island.add(i)
            if node.op_type == "MatMul":
                for inp in node.input:
                    operand(inp)
            else:
                stack.append(node.input[0])  # the data input; the others are int64 indices and axes
    return island


def _constant_array(graph, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant node output, else None."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            attr = node.attribute[0]
            return (
                numpy_helper.to_array(attr.t)
                if attr.name == "value"
                else np.array(
                    helper.get_attribute_value(attr), np.float32 if attr.name.startswith("value_float") else np.int64
                )
            )
    return None


def _to_half(node) -> None:
    """Rewrite a node's float32 attributes (Cast targets, constant values) to float16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = HALF
        elif attr.name == "value" and attr.t.data_type == FLOAT:  # Constant, ConstantOfShape
            attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
        elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
            value = np.array(helper.get_attribute_value(attr), np.float16)
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))
            return


def convert_to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of a float32 tpdeploy model (the input proto is not changed)."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        if value.type.tensor_type.elem_type != FLOAT:
            raise UserError(f"cannot convert to float16: {value.name} is not float32 (already an fp16 model?)")
    for node in proto.graph.node:
        if node.op_type in _TYPED_OPS or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        ):
            raise UserError(f"cannot convert to float16: {node.op_type} node {node.name} is not supported")
    try:
        model = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as e:  # inference raises several types
        raise UserError(f"cannot convert to float16: ONNX shape inference fails ({one_line(e)})") from None
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({i.name: i.data_type for i in graph.initializer})
    constants = _constant_names(graph)
    island = float32_islands(graph)
    island_outputs = {o for i in island for o in graph.node[i].output}

    new_init, nodes, made = [], [], set()
    for init in graph.initializer:
        new_init.append(
            numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
            if init.data_type == FLOAT
            else init
        )

    def cast(name: str, to: int) -> str:
        out = f"{name}_{'fp32' if to == FLOAT else 'fp16'}"
        if out not in made:
            made.add(out)
            if to == FLOAT and name in constants:  # a float32 copy of the constant, for the island
                new_init.append(numpy_helper.from_array(_constant_array(graph, name).astype(np.float32), out))
            else:
                nodes.append(helper.make_node("Cast", [name], [out], name=f"{out}_cast", to=to))
        return out

    for i, node in enumerate(graph.node):
        inside = i in island
        for j, name in enumerate(node.input):
            if types.get(name) != FLOAT or (name in island_outputs) == inside:
                continue
            if inside:
                node.input[j] = cast(name, FLOAT)  # an fp16 value (or constant) entering the island
            elif not (node.op_type == tokenpool.OP_TYPE and j == 1):
                node.input[j] = cast(name, HALF)  # island output leaving it (TokenPool's W stays float32)
        if not inside:
            _to_half(node)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_init)
    for value in list(graph.input) + list(graph.output):
        value.type.tensor_type.elem_type = HALF
    del graph.value_info[:]  # the float32 types of the original
    recipe = onnx_file.read_recipe(model, "the float32 model")
    if recipe is not None:  # the file says what it now is
        onnx_file.write_recipe(model, dataclasses.replace(recipe, dtype="fp16"))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"the float16 conversion fails the ONNX checker: {one_line(e)}") from None
    return model
