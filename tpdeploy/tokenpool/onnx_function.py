"""`tpdeploy::TokenPool` as an ONNX node and a model-local ONNX function of standard ops.

The function body follows `tpdeploy.tokenpool.reference.reference_token_pool` step for step (same formulas, same order
of float32 operations, same tie rules), so stock onnxruntime runs exported models with no extra
library and picks the same tokens as PyTorch. TensorRT >= 10.7 prefers a registered plugin of the same
name, version and namespace over the function.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from tpdeploy.errors import InvalidArgumentError, check_choice
from tpdeploy.tokenpool.definition import ATTRIBUTES, DOMAIN, FLT_MAX, MODES, OP_TYPE, VERSION

MIN_OPSET = 18  # ScatterElements with min/max reduction


def make_node(
    x: str, w: str, y: str, num_clusters: int, iterations: int, mode: str, weighted: bool, name: str = "TokenPool"
) -> onnx.NodeProto:
    return helper.make_node(
        OP_TYPE,
        [x, w],
        [y],
        name=name,
        domain=DOMAIN,
        num_clusters=num_clusters,
        iterations=iterations,
        mode=mode,
        weighted=int(weighted),
        plugin_version=str(VERSION),
        plugin_namespace=DOMAIN,
    )


class _Builder:
    """Emits nodes with unique value names (shared by a function body and its subgraphs)."""

    def __init__(self, counter=None):
        self.nodes: list[onnx.NodeProto] = []
        self._counter = counter if counter is not None else [0]

    def sub(self) -> _Builder:
        return _Builder(self._counter)

    def fresh(self, hint: str) -> str:
        self._counter[0] += 1
        return f"{hint}_{self._counter[0]}"

    def op(self, op_type: str, *inputs: str, n_out: int = 1, hint: str | None = None, **attrs):
        outputs = [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, **attrs))
        return outputs[0] if n_out == 1 else outputs

    def const(self, value, dtype=np.float32) -> str:
        arr = np.array(value, dtype=dtype)
        return self.op(
            "Constant",
            value=helper.make_tensor(
                self.fresh("c"), helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape, arr.flatten().tolist()
            ),
            hint="const",
        )

    def attr_const(self, attr: str) -> str:
        """A Constant holding the node's integer attribute `attr`."""
        ref = helper.make_attribute_ref("value_int", onnx.AttributeProto.INT)
        ref.ref_attr_name = attr
        node = helper.make_node("Constant", [], [self.fresh(attr)])
        node.attribute.append(ref)
        self.nodes.append(node)
        return node.output[0]

    def any_changed(self, new: str, old: str) -> str:
        """Loop condition: does any element differ?"""
        differs = self.op("Cast", self.op("Not", self.op("Equal", new, old)), to=TensorProto.INT32)
        return self.op("Cast", self.op("ReduceMax", differs, keepdims=0), to=TensorProto.BOOL, hint="changed")

    def clamp_distance(self, d: str) -> str:
        """NaN and +Inf -> FLT_MAX, negatives -> 0 (as op._clamp_finite_)."""
        fmax = self.const(FLT_MAX)
        return self.op("Max", self.op("Where", self.op("Less", d, fmax), d, fmax), self.const(0.0))


def _graph(b: _Builder, name: str, inputs, outputs) -> onnx.GraphProto:
    return helper.make_graph(b.nodes, name, inputs, outputs)


def _loop_io(state: str, elem, shape_len: int):
    """Loop body signature: (iteration, condition, state) -> (condition, state)."""
    return [
        helper.make_tensor_value_info("iter", TensorProto.INT64, []),
        helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        helper.make_tensor_value_info(state, elem, [None] * shape_len),
    ]


def function_proto(opset: int, mode: str) -> onnx.FunctionProto:
    """The model-local function `tpdeploy::TokenPool(X, W) -> Y` for a model of the given ai.onnx opset.

    The body is written for one `mode` (a model pools with one method): choosing the mode inside the
    function would need string ops, which TensorRT cannot import when it falls back to the function.
    `num_clusters`, `iterations` and `weighted` are read from each node's attributes.
    """
    if opset < MIN_OPSET:
        raise InvalidArgumentError(f"TokenPool's ONNX function needs opset >= {MIN_OPSET}, got {opset}")
    check_choice("mode", mode, MODES)
    b = _Builder()
    # Max(x, x) == x exactly, and no onnxruntime optimizer removes it: for float32 X the Cast is a no-op that
    # onnxruntime drops (and it drops x + 0 and x * 1 too), renaming a value that the If/Loop subgraphs read from
    # outside, which it cannot do safely: a warning per TokenPool node at every session start
    xf_any = b.op("Cast", "X", to=TensorProto.FLOAT)
    xf = b.op("Max", xf_any, xf_any, hint="xf")
    wf = b.op("Cast", "W", to=TensorProto.FLOAT, hint="wf")
    zero, fmax = b.const(0.0), b.const(FLT_MAX)
    order_w = b.op("Min", b.op("Where", b.op("Greater", wf, zero), wf, zero), fmax, hint="order_w")
    weighted = b.op("Cast", b.attr_const("weighted"), to=TensorProto.BOOL)
    cluster_w = b.op("Where", weighted, order_w, b.op("Expand", b.const(1.0), b.op("Shape", order_w)), hint="cluster_w")
    k = b.op("Reshape", b.attr_const("num_clusters"), b.const([1], np.int64), hint="k")
    _, init = b.op("TopK", order_w, k, axis=1, largest=1, sorted=1, n_out=2, hint="init")  # ties: lowest index
    iterations = b.attr_const("iterations")
    shape_x = b.op("Shape", "X")
    batch, n, c = (b.op("Slice", shape_x, b.const([i], np.int64), b.const([i + 1], np.int64)) for i in range(3))
    bk = b.op("Concat", batch, k, axis=0)

    def gather_rows(g: _Builder, src: str, idx: str) -> str:
        return g.op("GatherND", src, g.op("Unsqueeze", idx, g.const([2], np.int64)), batch_dims=1)

    clustered = b.sub()  # kmedoids or kmeans: a Loop that exits early once the centres stop changing
    if mode == "kmedoids":
        clustered_y = gather_rows(
            clustered, "X", _kmedoids_loop(clustered, xf, cluster_w, init, iterations, batch, n, k, bk)
        )
    else:
        centres = _kmeans_loop(clustered, xf, cluster_w, init, iterations, batch, n, c, bk, gather_rows)
        clustered_y = clustered.op("CastLike", centres, "X")

    def branch(g: _Builder, name: str, y: str) -> onnx.GraphProto:
        return helper.make_graph(g.nodes, name, [], [helper.make_empty_tensor_value_info(y)])

    top = b.sub()  # T == 0 is top-K by significance: no distances at all
    top_y = gather_rows(top, "X", init)
    b.nodes.append(
        helper.make_node(
            "If",
            [b.op("Equal", iterations, b.const(0, np.int64))],
            ["Y"],
            then_branch=branch(top, "topk", top_y),
            else_branch=branch(clustered, mode, clustered_y),
        )
    )
    return helper.make_function(
        DOMAIN, OP_TYPE, ["X", "W"], ["Y"], b.nodes, [helper.make_opsetid("", opset)], attributes=list(ATTRIBUTES)
    )


def _kmedoids_loop(g: _Builder, xf, w, init, iterations, batch, n, k, bk) -> str:
    gram = g.op("MatMul", xf, g.op("Transpose", xf, perm=[0, 2, 1]), hint="gram")  # [B, N, N]
    token = g.op("Range", g.const(0, np.int64), g.op("Squeeze", n), g.const(1, np.int64), hint="token")  # [N]
    bn1 = g.op("Concat", batch, n, g.const([1], np.int64), axis=0)
    diag_idx = g.op("Expand", g.op("Unsqueeze", token, g.const([1], np.int64)), bn1)
    sq = g.op("GatherElements", gram, diag_idx, axis=2, hint="sq")  # [B, N, 1]
    outer = g.op("Add", sq, g.op("Transpose", sq, perm=[0, 2, 1]))
    dist = g.clamp_distance(g.op("Sub", outer, g.op("Mul", gram, g.const(2.0))))  # [B, N, N]
    w_col = g.op("Unsqueeze", w, g.const([2], np.int64))
    bnk = g.op("Concat", batch, n, k, axis=0)
    inf_bk = g.op("Expand", g.const(np.inf), bk)
    n_bk = g.op("Expand", g.op("Squeeze", n), bk)
    zero_bk = g.op("Expand", g.const(0.0), bk)
    tokens_bn = g.op("Expand", token, g.op("Concat", batch, n, axis=0))

    body = g.sub()
    med = "medoids_in"
    to_medoid = body.op(
        "GatherElements", dist, body.op("Expand", body.op("Unsqueeze", med, body.const([1], np.int64)), bnk), axis=2
    )
    assign = body.op("ArgMin", to_medoid, axis=2, keepdims=0, hint="assign")  # ties: lowest k
    same = body.op(
        "Equal",
        body.op("Unsqueeze", assign, body.const([2], np.int64)),
        body.op("Unsqueeze", assign, body.const([1], np.int64)),
    )
    cost = body.op("MatMul", body.op("Where", same, dist, body.const(0.0)), w_col)  # [B, N, 1]
    cost = body.op("Min", body.op("Squeeze", cost, body.const([2], np.int64)), body.const(FLT_MAX), hint="cost")
    best = body.op("ScatterElements", inf_bk, assign, cost, axis=1, reduction="min")
    is_best = body.op("Equal", cost, body.op("GatherElements", best, assign, axis=1))
    candidate = body.op(
        "ScatterElements",
        n_bk,
        assign,
        body.op("Where", is_best, tokens_bn, body.op("Squeeze", n)),
        axis=1,
        reduction="min",
    )
    heaviest = body.op("ScatterElements", zero_bk, assign, w, axis=1, reduction="max")
    new = body.op("Where", body.op("Greater", heaviest, body.const(0.0)), candidate, med, hint="medoids")
    changed = body.any_changed(new, med)
    body_graph = _graph(
        body,
        "kmedoids_step",
        _loop_io(med, TensorProto.INT64, 2),
        [
            helper.make_tensor_value_info(changed, TensorProto.BOOL, []),
            helper.make_tensor_value_info(new, TensorProto.INT64, None),
        ],
    )
    return g.op("Loop", iterations, g.const(True, np.bool_), init, body=body_graph, hint="medoids")


def _kmeans_loop(g: _Builder, xf, w, init, iterations, batch, n, c, bk, gather_rows) -> str:
    centres0 = gather_rows(g, xf, init)  # [B, K, C]
    sq_x = g.op("ReduceSum", g.op("Mul", xf, xf), g.const([2], np.int64), keepdims=1)  # [B, N, 1]
    w_col = g.op("Unsqueeze", w, g.const([2], np.int64))
    weighted_x = g.op("Mul", xf, w_col)
    zero_bk = g.op("Expand", g.const(0.0), bk)
    zero_bkc = g.op("Expand", g.const(0.0), g.op("Concat", bk, c, axis=0))
    bnc = g.op("Concat", batch, n, c, axis=0)

    body = g.sub()
    cen = "centres_in"
    sq_c = body.op("ReduceSum", body.op("Mul", cen, cen), body.const([2], np.int64), keepdims=1)  # [B, K, 1]
    dot = body.op("MatMul", xf, body.op("Transpose", cen, perm=[0, 2, 1]))  # [B, N, K]
    dist = body.clamp_distance(
        body.op(
            "Sub",
            body.op("Add", sq_x, body.op("Transpose", sq_c, perm=[0, 2, 1])),
            body.op("Mul", dot, body.const(2.0)),
        )
    )
    assign = body.op("ArgMin", dist, axis=2, keepdims=0, hint="assign")  # ties: lowest k
    total = body.op("ScatterElements", zero_bk, assign, w, axis=1, reduction="add")
    sums = body.op(
        "ScatterElements",
        zero_bkc,
        body.op("Expand", body.op("Unsqueeze", assign, body.const([2], np.int64)), bnc),
        weighted_x,
        axis=1,
        reduction="add",
    )
    has_weight = body.op("Greater", total, body.const(0.0))
    safe_total = body.op("Where", has_weight, total, body.const(1.0))
    mean = body.op("Div", sums, body.op("Unsqueeze", safe_total, body.const([2], np.int64)))
    new = body.op("Where", body.op("Unsqueeze", has_weight, body.const([2], np.int64)), mean, cen, hint="centres")
    changed = body.any_changed(new, cen)
    body_graph = _graph(
        body,
        "kmeans_step",
        _loop_io(cen, TensorProto.FLOAT, 3),
        [
            helper.make_tensor_value_info(changed, TensorProto.BOOL, []),
            helper.make_tensor_value_info(new, TensorProto.FLOAT, None),
        ],
    )
    return g.op("Loop", iterations, g.const(True, np.bool_), centres0, body=body_graph, hint="centres")


def single_op_model(
    dtype: str, num_clusters: int, iterations: int, mode: str, weighted: bool, opset: int = MIN_OPSET
) -> onnx.ModelProto:
    """A model with one TokenPool node and its function: X [B, N, C], W [B, N] -> Y [B, K, C]."""
    elem = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    graph = helper.make_graph(
        [make_node("X", "W", "Y", num_clusters, iterations, mode, weighted)],
        "token_pool",
        [
            helper.make_tensor_value_info("X", elem, ["B", "N", "C"]),
            helper.make_tensor_value_info("W", elem, ["B", "N"]),
        ],
        [helper.make_tensor_value_info("Y", elem, ["B", num_clusters, "C"])],
    )
    return helper.make_model(
        graph,
        functions=[function_proto(opset, mode)],
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, VERSION)],
    )


def inline_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every TokenPool node replaced by its function body (standard ops only), as TensorRT parses
    it with --no-plugin. Each node's `If (iterations == 0)` has a constant condition once inlined: it is
    replaced by the branch it takes, so TensorRT gets no conditional around the loop."""
    import onnx.inliner

    model = onnx.inliner.inline_local_functions(proto)
    _fold_constant_ifs(model.graph)
    return model


def _constant_scalar(graph: onnx.GraphProto, name: str):
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return (
                onnx.numpy_helper.to_array(node.attribute[0].t)
                if node.attribute[0].name == "value"
                else helper.get_attribute_value(node.attribute[0])
            )
    for init in graph.initializer:
        if init.name == name:
            return onnx.numpy_helper.to_array(init)
    return None


def _fold_constant_ifs(graph: onnx.GraphProto) -> None:
    """Replace each `If(Equal(a, b))` whose operands are constants by the nodes of the branch it takes."""
    producer = {o: n for n in graph.node for o in n.output}
    nodes = []
    for node in graph.node:
        cond = producer.get(node.input[0]) if node.op_type == "If" else None
        if cond is not None and cond.op_type == "Equal":
            a, b = (_constant_scalar(graph, i) for i in cond.input)
            if a is not None and b is not None:
                branch = helper.get_attribute_value(
                    next(x for x in node.attribute if x.name == ("then_branch" if a == b else "else_branch"))
                )
                nodes.extend(branch.node)
                # the branch's outputs become the If's outputs
                nodes.extend(
                    helper.make_node("Identity", [out.name], [name]) for out, name in zip(branch.output, node.output)
                )
                continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
