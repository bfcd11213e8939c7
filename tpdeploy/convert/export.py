"""`tpdeploy export`: Token-Pooled ViT -> ONNX with `tpdeploy::TokenPool` nodes backed by a local function."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import torch

from tpdeploy.artifacts import onnx_file
from tpdeploy.artifacts.files import atomic_output, check_output
from tpdeploy.data.samples import sample_images
from tpdeploy.errors import InvalidArgumentError, UserError, check_choice, check_int, one_line
from tpdeploy.model.plan import PlanSummary
from tpdeploy.model.vit import TokenPooledViT
from tpdeploy.signals import deferred_signals
from tpdeploy.tokenpool import onnx_function

DEFAULT_OPSET = 20
INPUT, OUTPUT = "images", "logits"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class ExportReport:
    path: str
    summary: PlanSummary
    dtype: str
    batch: int | None
    opset: int
    token_pool_nodes: int
    validation_images: int
    max_abs_error: float
    max_rel_error: float  # max abs error / max |logit|
    top1_agreement: float
    file_bytes: int

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.summary.plan.tokens

    def format(self) -> str:
        shape = f"batch {self.batch}" if self.batch else "dynamic batch"
        return (
            f"exported {self.path} ({self.file_bytes / 1e6:.1f} MB, opset {self.opset}, {shape}, {self.dtype}, "
            f"{self.token_pool_nodes} TokenPool nodes)\n{self.summary.format()}\n"
            f"validation vs PyTorch fp32 on {self.validation_images} images: max abs error "
            f"{self.max_abs_error:.2e} ({self.max_rel_error:.1e} of the largest logit), top-1 agreement "
            f"{self.top1_agreement:.0%}"
        )

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "summary"}
        return {**d, "model": self.summary.to_json()}


def to_onnx(model, dtype: str = "fp32", batch: int | None = None, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace the model with the dynamo exporter, attach the TokenPool function and the recipe."""
    check_model(model)
    check_choice("dtype", dtype, tuple(DTYPES))
    if batch is not None:
        check_int("batch", batch, minimum=1)
    if check_int("opset", opset) < onnx_function.MIN_OPSET:
        raise UserError(f"opset {opset} is too old: TokenPool's function needs opset >= {onnx_function.MIN_OPSET}")
    if opset > onnx.defs.onnx_opset_version():
        raise InvalidArgumentError(f"opset {opset} is newer than this onnx knows ({onnx.defs.onnx_opset_version()})")
    if dtype != "fp32":
        model = copy.deepcopy(model).to(DTYPES[dtype])  # the caller keeps its float32 model
    example = torch.zeros(batch or 2, 3, model.cfg.img_size, model.cfg.img_size, dtype=DTYPES[dtype])
    dynamic = None if batch else {INPUT: {0: torch.export.Dim("batch", min=1, max=4096)}}
    # a Ctrl+C or SIGTERM inside the exporter's C++ would come out as its error, or abort: held until it returns
    with _quiet_exporter(), deferred_signals():
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=dynamic,
                opset_version=opset,
                verbose=False,
            )
        except Exception as e:  # report the exporter's failure in one line
            raise UserError(f"ONNX export failed: {type(e).__name__}: {one_line(e)}") from None
    proto = program.model_proto
    pools = onnx_file.token_pool_nodes(proto)
    if pools:
        # one function for every node: a model's TokenPool nodes share their mode and iterations
        proto.functions.append(onnx_function.function_proto(opset, pools[0]["mode"], pools[0]["iterations"]))
        for i, node in enumerate(n for n in proto.graph.node if n.op_type == onnx_function.OP_TYPE):
            node.name = f"TokenPool_{i}"
            del node.metadata_props[:]
    proto.producer_name = "tpdeploy"
    # the oldest IR version the opsets need (9 for opset 20), not the exporter's newest: onnxruntime 1.17 reads
    # IR <= 9 and refuses anything newer; model-local functions need IR 8
    proto.ir_version = max(8, onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True))
    onnx_file.write_recipe(proto, model.recipe(dtype))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"exported model fails the ONNX checker: {one_line(e)}") from None
    return proto


def check_model(model) -> None:
    if not isinstance(model, TokenPooledViT):
        raise InvalidArgumentError(
            f"model must be a Token-Pooled ViT (tpdeploy.create_model), got {type(model).__name__}"
        )


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


def export(
    model,
    output: str,
    dtype: str = "fp32",
    batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    validate_batch: int = 2,
    inputs=(),
    progress=lambda msg: None,
) -> ExportReport:
    """Export and validate onnxruntime against PyTorch (fp32 reference) on sample images, then move the file
    into place: `output` appears only for a model that loaded and ran. `inputs` (the checkpoint, a preset file)
    are never written over."""
    check_model(model)
    check_int("validate_batch", validate_batch, minimum=1)
    inputs = [model.origin.checkpoint_path, *inputs]
    check_output(output, inputs=inputs)
    progress(f"tracing {model.cfg.name} ({model.method}, {dtype}) with the dynamo exporter")
    proto = to_onnx(model, dtype, batch, opset)
    with atomic_output(output, inputs=inputs) as tmp:
        progress(f"writing {output}")
        onnx.save(proto, tmp)
        progress("validating onnxruntime against PyTorch")
        from tpdeploy.runtime.onnxrt import OnnxRuntimeRunner

        images = sample_images(batch or validate_batch, model.cfg.img_size, config=model.cfg.data_config)
        with torch.no_grad():
            expected = model(torch.from_numpy(images)).numpy()
        got = OnnxRuntimeRunner(tmp).infer(images).astype(np.float32)
        file_bytes = os.path.getsize(tmp)
    return ExportReport(
        path=output,
        summary=PlanSummary(model.plan, model.origin),
        dtype=dtype,
        batch=batch,
        opset=opset,
        token_pool_nodes=len(onnx_file.token_pool_nodes(proto)),
        validation_images=len(images),
        max_abs_error=float(np.abs(got - expected).max()),
        max_rel_error=float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30)),
        top1_agreement=float((got.argmax(1) == expected.argmax(1)).mean()),
        file_bytes=file_bytes,
    )
