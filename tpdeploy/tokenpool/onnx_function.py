"""`tpdeploy::TokenPool` as an ONNX node and a model-local ONNX function of standard ops.

The function body follows `tpdeploy.tokenpool.reference.reference_token_pool` (same formulas, same float32
operations, same tie rules), so stock onnxruntime runs exported models with no extra library and picks the same
tokens as PyTorch. It is written for one mode and iteration count (the nodes' attributes; a model pools with one
method): the iterations are unrolled, each one after the first behind an If that skips it at a fixed point (the
reference's early exit, worth a whole iteration on typical inputs); `inline_functions` gives TensorRT the body
without the Ifs. TensorRT >= 10.7 prefers a registered plugin of the same name, version and namespace over the
function.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from tpdeploy.errors import InvalidArgumentError, check_choice, check_int
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

    def filled(self, value: float, shape: str) -> str:
        """A float32 tensor of `shape` holding `value` (ConstantOfShape, which onnxruntime leaves as it is where
        it would rewrite an Expand of a constant and warn that subgraphs read it)."""
        return self.op("ConstantOfShape", shape, value=helper.make_tensor("value", TensorProto.FLOAT, [1], [value]))

    def clamp_distance(self, d: str) -> str:
        """NaN and +Inf -> FLT_MAX, negatives -> 0 (as reference._clamp_finite_)."""
        fmax = self.const(FLT_MAX)
        return self.op("Max", self.op("Where", self.op("Less", d, fmax), d, fmax), self.const(0.0))

    def any_changed(self, new: str, old: str) -> str:
        differs = self.op("Cast", self.op("Not", self.op("Equal", new, old)), to=TensorProto.INT32)
        return self.op("Cast", self.op("ReduceMax", differs, keepdims=0), to=TensorProto.BOOL, hint="changed")


def _iterate(b: _Builder, step, state: str, iterations: int, early_exit: bool, fingerprint: str | None = None) -> str:
    """`iterations` (>= 1) times `state, fingerprint = step(builder, state)`. With `early_exit`, each time after the
    first whose fingerprint can be compared with the one before runs inside an If on whether it changed: a step
    whose fingerprint equals the previous one's left the state at a fixed point, so onnxruntime skips the rest."""
    new, new_fingerprint = step(b, state)
    if iterations == 1:
        return new
    if not early_exit or fingerprint is None:
        return _iterate(b, step, new, iterations - 1, early_exit, new_fingerprint)
    more, done = b.sub(), b.sub()
    more_y = _iterate(more, step, new, iterations - 1, early_exit, new_fingerprint)
    done_y = done.op("Identity", new)
    return b.op(
        "If",
        b.any_changed(new_fingerprint, fingerprint),
        then_branch=_branch(more, more_y, "next_step"),
        else_branch=_branch(done, done_y, "fixed_point"),
    )


def _branch(g: _Builder, y: str, name: str) -> onnx.GraphProto:
    return helper.make_graph(g.nodes, name, [], [helper.make_empty_tensor_value_info(y)])


def function_proto(opset: int, mode: str, iterations: int, early_exit: bool = True) -> onnx.FunctionProto:
    """The model-local function `tpdeploy::TokenPool(X, W) -> Y` for a model of the given ai.onnx opset whose
    TokenPool nodes all have this `mode` and `iterations`; `num_clusters` and `weighted` are read from each node.

    Written for them: choosing the mode inside the function would need string ops, which TensorRT cannot import
    when it falls back to the function, and the iterations are unrolled (no Loop), each one after the first inside
    an If that skips it at a fixed point unless `early_exit` is False.
    """
    if opset < MIN_OPSET:
        raise InvalidArgumentError(f"TokenPool's ONNX function needs opset >= {MIN_OPSET}, got {opset}")
    check_choice("mode", mode, MODES)
    iterations = check_int("iterations", iterations, minimum=0)
    b = _Builder()
    wf = b.op("Cast", "W", to=TensorProto.FLOAT, hint="wf")
    zero = b.const(0.0)
    order_w = b.op("Min", b.op("Where", b.op("Greater", wf, zero), wf, zero), b.const(FLT_MAX), hint="order_w")
    k = b.op("Reshape", b.attr_const("num_clusters"), b.const([1], np.int64), hint="k")
    _, init = b.op("TopK", order_w, k, axis=1, largest=1, sorted=1, n_out=2, hint="init")  # ties: lowest index
    if iterations == 0:  # top-K by significance: no distances at all
        _gather_rows(b, "X", init, "Y")
    else:
        weighted = b.op("Cast", b.attr_const("weighted"), to=TensorProto.BOOL)
        ones = b.filled(1.0, b.op("Shape", order_w))
        cluster_w = b.op("Where", weighted, order_w, ones, hint="cluster_w")
        shape_x = b.op("Shape", "X")
        batch, n, c = (b.op("Slice", shape_x, b.const([i], np.int64), b.const([i + 1], np.int64)) for i in range(3))
        xf = b.op("Cast", "X", to=TensorProto.FLOAT, hint="xf")
        if mode == "kmedoids":
            step = _kmedoids_step(b, xf, cluster_w, batch, n, k)
            _gather_rows(b, "X", _iterate(b, step, init, iterations, early_exit, fingerprint=init), "Y")
        else:
            step = _kmeans_step(b, xf, cluster_w, batch, n, c, k)
            centres = b.op("Transpose", _gather_rows(b, xf, init), perm=[0, 2, 1])  # [B, C, K]
            centres = _iterate(b, step, centres, iterations, early_exit)
            b.nodes.append(helper.make_node("CastLike", [b.op("Transpose", centres, perm=[0, 2, 1]), "X"], ["Y"]))
    return helper.make_function(
        DOMAIN, OP_TYPE, ["X", "W"], ["Y"], b.nodes, [helper.make_opsetid("", opset)], attributes=list(ATTRIBUTES)
    )


def _gather_rows(b: _Builder, src: str, idx: str, out: str | None = None) -> str:
    """src[b, idx[b, k]]: [B, N, C] and [B, K] -> [B, K, C]."""
    rows = b.op("Unsqueeze", idx, b.const([2], np.int64))
    if out is None:
        return b.op("GatherND", src, rows, batch_dims=1)
    b.nodes.append(helper.make_node("GatherND", [src, rows], [out], batch_dims=1))
    return out


def _kmedoids_step(b: _Builder, xf, w, batch, n, k):
    gram = b.op("MatMul", xf, b.op("Transpose", xf, perm=[0, 2, 1]), hint="gram")  # [B, N, N]
    token = b.op("Range", b.const(0, np.int64), b.op("Squeeze", n), b.const(1, np.int64), hint="token")  # [N]
    bn1 = b.op("Concat", batch, n, b.const([1], np.int64), axis=0)
    diag_idx = b.op("Expand", b.op("Unsqueeze", token, b.const([1], np.int64)), bn1)
    sq = b.op("GatherElements", gram, diag_idx, axis=2, hint="sq")  # [B, N, 1]
    outer = b.op("Add", sq, b.op("Transpose", sq, perm=[0, 2, 1]))
    dist = b.clamp_distance(b.op("Sub", outer, b.op("Mul", gram, b.const(2.0))))  # [B, N, N]
    w_col = b.op("Unsqueeze", w, b.const([2], np.int64))
    bnk = b.op("Concat", batch, n, k, axis=0)
    bk = b.op("Concat", batch, k, axis=0)
    inf_bk = b.filled(np.inf, bk)
    n_bk = b.op("Expand", b.op("Squeeze", n), bk)
    zero_bk = b.filled(0.0, bk)
    tokens_bn = b.op("Expand", token, b.op("Concat", batch, n, axis=0))
    axis1, axis2 = b.const([1], np.int64), b.const([2], np.int64)
    zero, fmax, n_scalar = b.const(0.0), b.const(FLT_MAX), b.op("Squeeze", n)

    def step(g: _Builder, medoids: str) -> str:
        to_medoid = g.op("GatherElements", dist, g.op("Expand", g.op("Unsqueeze", medoids, axis1), bnk), axis=2)
        assign = g.op("ArgMin", to_medoid, axis=2, keepdims=0, hint="assign")  # ties: lowest k
        same = g.op("Equal", g.op("Unsqueeze", assign, axis2), g.op("Unsqueeze", assign, axis1))
        # dist * same is Where(same, dist, 0) (dist is finite), and onnxruntime's Mul is 5x faster than its Where
        masked = g.op("Mul", dist, g.op("Cast", same, to=TensorProto.FLOAT))
        cost = g.op("Min", g.op("Squeeze", g.op("MatMul", masked, w_col), axis2), fmax, hint="cost")  # [B, N]
        best = g.op("ScatterElements", inf_bk, assign, cost, axis=1, reduction="min")
        is_best = g.op("Equal", cost, g.op("GatherElements", best, assign, axis=1))
        candidate = g.op(
            "ScatterElements", n_bk, assign, g.op("Where", is_best, tokens_bn, n_scalar), axis=1, reduction="min"
        )
        heaviest = g.op("ScatterElements", zero_bk, assign, w, axis=1, reduction="max")
        new = g.op("Where", g.op("Greater", heaviest, zero), candidate, medoids, hint="medoids")
        return new, new

    return step


def _kmeans_step(b: _Builder, xf, w, batch, n, c, k):
    """The centres travel transposed, [B, C, K]: onnxruntime scatters the sums a quarter faster along the last
    axis (the same sums, in token order), and X [B, N, C] multiplies them as they are."""
    axis1, axis2 = b.const([1], np.int64), b.const([2], np.int64)
    sq_x = b.op("ReduceSum", b.op("Mul", xf, xf), axis2, keepdims=1)  # [B, N, 1]
    weighted_xt = b.op("Transpose", b.op("Mul", xf, b.op("Unsqueeze", w, axis2)), perm=[0, 2, 1])  # [B, C, N]
    bck = b.op("Concat", batch, c, k, axis=0)
    zero_bk = b.filled(0.0, b.op("Concat", batch, k, axis=0))
    zero_bck = b.filled(0.0, bck)
    bcn = b.op("Concat", batch, c, n, axis=0)
    zero, one, two = b.const(0.0), b.const(1.0), b.const(2.0)
    cluster = b.op("Range", b.const(0, np.int64), b.op("Squeeze", k), b.const(1, np.int64), hint="cluster")  # [K]
    kept = b.op("Add", cluster, b.op("Squeeze", k), hint="kept")  # column k + K: the centre it had

    def step(g: _Builder, centres: str) -> tuple[str, str]:
        sq_c = g.op("ReduceSum", g.op("Mul", centres, centres), axis1, keepdims=1)  # [B, 1, K]
        dot = g.op("MatMul", xf, centres)  # [B, N, K]
        dist = g.clamp_distance(g.op("Sub", g.op("Add", sq_x, sq_c), g.op("Mul", dot, two)))
        assign = g.op("ArgMin", dist, axis=2, keepdims=0, hint="assign")  # ties: lowest k
        total = g.op("ScatterElements", zero_bk, assign, w, axis=1, reduction="add")
        member = g.op("Expand", g.op("Unsqueeze", assign, axis1), bcn)  # [B, C, N]
        sums = g.op("ScatterElements", zero_bck, member, weighted_xt, axis=2, reduction="add")
        has_weight = g.op("Greater", total, zero)
        mean = g.op("Div", sums, g.op("Unsqueeze", g.op("Where", has_weight, total, one), axis1))
        # each centre's column from [means, centres] rather than a float Where, which turns -0.0 into +0.0 in
        # onnxruntime: a centre takes its mean's bits, or keeps its own
        column = g.op("Expand", g.op("Unsqueeze", g.op("Where", has_weight, cluster, kept), axis1), bck)
        new = g.op("GatherElements", g.op("Concat", mean, centres, axis=2), column, axis=2, hint="centres")
        return new, assign  # the same assignment as the step before gives the same centres: a fixed point

    return step


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
        functions=[function_proto(opset, mode, iterations)],
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, VERSION)],
    )


def inline_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every TokenPool node replaced by the body of its function without the early exit (standard
    ops, no If or Loop), as TensorRT parses it with --no-plugin."""
    import onnx.inliner

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    node = next((n for n in model.graph.node if (n.domain, n.op_type) == (DOMAIN, OP_TYPE)), None)
    for f in model.functions:
        if node is not None and (f.domain, f.name) == (DOMAIN, OP_TYPE):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            opset = next(o.version for o in f.opset_import if o.domain in ("", "ai.onnx"))
            f.CopyFrom(function_proto(opset, attrs["mode"].decode(), attrs["iterations"], early_exit=False))
    return onnx.inliner.inline_local_functions(model)
