"""`tpdeploy export`: Token-Pooled DeiT -> ONNX with `tpdeploy::TokenPool` nodes backed by a local function."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from tpdeploy import onnx_op
from tpdeploy import schedule as sched
from tpdeploy.errors import TpdeployError, one_line
from tpdeploy.files import atomic_output
from tpdeploy.images import sample_images

DEFAULT_OPSET = 20
INPUT, OUTPUT = "images", "logits"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class ExportReport:
    path: str
    arch: str
    method: str
    tokens: tuple[int, ...]
    gmacs: float
    gmacs_dense: float
    dtype: str
    batch: int | None
    opset: int
    token_pool_nodes: int
    checkpoint: str | None
    max_abs_error: float
    top1_agreement: float
    file_bytes: int


def to_onnx(model, dtype: str = "fp32", batch: int | None = None, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace the model with the dynamo exporter and attach the TokenPool function."""
    if opset < onnx_op.MIN_OPSET:
        raise TpdeployError(f"opset {opset} is too old: TokenPool's function needs opset >= {onnx_op.MIN_OPSET}")
    if dtype != "fp32":
        model = copy.deepcopy(model).to(DTYPES[dtype])  # the caller keeps its float32 model
    example = torch.zeros(batch or 2, 3, model.cfg.img_size, model.cfg.img_size, dtype=DTYPES[dtype])
    dynamic = None if batch else {INPUT: {0: torch.export.Dim("batch", min=1, max=4096)}}
    with _quiet_exporter():
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes=dynamic, opset_version=opset, verbose=False)
        except Exception as e:  # noqa: BLE001 - report the exporter's failure in one line
            raise TpdeployError(f"ONNX export failed: {type(e).__name__}: {one_line(e)}") from None
    proto = program.model_proto
    pools = [n for n in proto.graph.node if n.op_type == onnx_op.OP_TYPE and n.domain == onnx_op.DOMAIN]
    if pools:
        mode = onnx_op.node_attributes(pools[0])["mode"].decode()
        proto.functions.append(onnx_op.function_proto(opset, mode))
        for i, node in enumerate(pools):
            node.name = f"TokenPool_{i}"
            del node.metadata_props[:]
    proto.producer_name = "tpdeploy"
    _set_metadata(proto, model)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise TpdeployError(f"exported model fails the ONNX checker: {one_line(e)}") from None
    return proto


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's own chatter (warnings, logs, prints) is not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _set_metadata(proto: onnx.ModelProto, model) -> None:
    """What it takes to rebuild the PyTorch model (`backends.pytorch.TorchRunner.from_onnx`)."""
    meta = {"tpdeploy.arch": model.cfg.name, "tpdeploy.method": model.method,
            "tpdeploy.iterations": str(model.iterations), "tpdeploy.tokens": ",".join(map(str, model.tokens)),
            "tpdeploy.checkpoint": model.checkpoint or "", "tpdeploy.seed": str(model.seed)}
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)


def export(model, output: str, dtype: str = "fp32", batch: int | None = None, opset: int = DEFAULT_OPSET,
           validate_batch: int = 2, progress=lambda msg: None) -> ExportReport:
    """Export, write atomically, then validate onnxruntime against PyTorch (fp32 reference) on sample images."""
    progress(f"tracing {model.cfg.name} ({model.method}, {dtype}) with the dynamo exporter")
    proto = to_onnx(model, dtype, batch, opset)
    progress(f"writing {output}")
    with atomic_output(output) as tmp:
        onnx.save(proto, tmp)
    progress("validating onnxruntime against PyTorch")
    from tpdeploy.backends.onnxrt import OnnxRuntimeRunner
    images = sample_images(batch or validate_batch, model.cfg.img_size)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    got = OnnxRuntimeRunner(output).infer(images).astype(np.float32)
    d = model.cfg.dims
    pools = sum(1 for n in proto.graph.node if n.op_type == onnx_op.OP_TYPE)
    return ExportReport(
        path=output, arch=model.cfg.name, method=model.method, tokens=model.tokens, gmacs=model.macs / 1e9,
        gmacs_dense=sched.macs(sched.dense(d), d) / 1e9, dtype=dtype, batch=batch, opset=opset,
        token_pool_nodes=pools, checkpoint=model.checkpoint, max_abs_error=float(np.abs(got - expected).max()),
        top1_agreement=float((got.argmax(1) == expected.argmax(1)).mean()), file_bytes=os.path.getsize(output))
