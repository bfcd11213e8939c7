"""`tpdeploy quantize`: a float32 ONNX file -> static Q/DQ int8 (or FP8) ONNX, calibrated on images decoded with
the file's own recorded preprocessing. onnx and onnxruntime only: no PyTorch, no checkpoint.

    report = quantize("tp.onnx", "tp_int8.onnx", calib="val/", limit=128)          # onnxruntime, CPU
    report = quantize("tp.onnx", "tp_trt.onnx", calib="val/", target="tensorrt")    # TensorRT explicit quantization

The quantizer is onnxruntime's (`onnxruntime.quantization.quantize_static`: QDQ format, per-channel symmetric
int8 weights stored as int8 with a DequantizeLinear, activations calibrated by MinMax, Entropy or Percentile).
nvidia-modelopt's ONNX PTQ is that same call with TensorRT's settings around it; here it needs torch, pins
onnx 1.21 and onnxruntime-gpu (which breaks the `[cpu]` install), quantizes the significance chain unless told
not to (69% top-1 agreement on deit_tiny 0.58x against 95% here, 256 images) and its float16 pass needs
TensorRT. So its settings are taken, not the package: symmetric activations, Conv weights per output channel
(axis 0; a MatMul weight [K, N] per column, axis 1, onnxruntime's default and modelopt's), no quantized bias,
float outputs, and its FP8 recipe (max-calibrated int8 scales times 448/127, `modelopt...fp8.int8_to_fp8`).

Only the inputs of MatMul, Gemm and Conv are quantized; their outputs stay float, so onnxruntime fuses each into
MatMulIntegerToFloat and TensorRT each into its int8 layer. What stays float32, always:
- the significance of every pooling step: the attention logits MatMul, its softmax and their sum, TokenPool's
  W (`tpdeploy.convert.fp16.float32_islands`), as the fp16 contract keeps them: pooling decisions follow the
  sums. onnxruntime puts one Q/DQ pair on a tensor for all its readers, so the softmax that feeds the quantized
  probabilities x values product is given back, unquantized, to the sum (`restore_float_inputs`).
- TokenPool itself (its X input too) and everything inside its model-local function: the quantizer works on
  the main graph only.
- the head (0.1% of the MACs).
- LayerNorm, GELU, the residual adds and softmaxes: not quantized ops (their inputs are not MatMul inputs).
Measured (deit_tiny 0.58x, seeded-random weights, 128 built-in calibration images, top-1 agreement with the float
file on 1024 structured images, ± one standard error 0.8%): 93.4% as above, 93.2% with the significance chain
quantized too, 92.7% with the head quantized: within the noise, so neither measurement shows a part can go lower;
with trained weights, measure again (`benchmarks/quantize_cpu.py`, `eval --baseline`).

Targets: `ort` quantizes activations to asymmetric uint8 (onnxruntime's choice for x86 CPUs); `tensorrt` to
symmetric int8 with zero point 0, which TensorRT's explicit quantization requires (`build-engine` refuses an
`ort` file). On DeiT-S 0.58x (1024 images as above) symmetric minmax costs 3.5 points (94.0% against 90.5%) and
symmetric percentile calibration gets them back (94.4%, but 3 minutes of histograms instead of 30 s).
FP8 (float8e4m3fn Q/DQ, opset >= 19) is for TensorRT on GPUs with FP8 (compute capability 8.9 and up):
onnxruntime runs it on the CPU only by emulation, slower than float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tpdeploy.artifacts import onnx_file
from tpdeploy.artifacts.files import atomic_output, check_output
from tpdeploy.artifacts.onnx_file import OnnxFile
from tpdeploy.artifacts.recipe import (
    CALIBRATION_METHODS,
    QUANT_PRECISIONS,
    QUANT_TARGETS,
    DataConfig,
    Quantization,
)
from tpdeploy.convert.fp16 import float32_islands
from tpdeploy.data.datasets import DEFAULT_WORKERS, data_inputs, decoded_batches, open_dataset
from tpdeploy.data.samples import sample_images
from tpdeploy.errors import UserError, check_choice, check_int, one_line
from tpdeploy.optional import lazy_import
from tpdeploy.tokenpool import definition as tokenpool

DEFAULT_PRECISION = "int8"
DEFAULT_METHOD = "minmax"
DEFAULT_CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 8
BUILTIN_SEED = 1000  # the built-in calibration images: seeds 1000, 1001, ... (evaluation uses others)
VALIDATION_IMAGES = 16
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
# what a quantized graph has that a float one does not (onnxruntime's QDQ and QOperator formats)
QUANTIZED_GRAPH_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "MatMulIntegerToFloat",
)
FLOAT_PARTS = (
    "significance (attention logits, softmax and sum of each pooling step)",
    "TokenPool",
    "head",
    "LayerNorm, GELU, residual adds",
)
FP8_MIN_OPSET = 19  # float8e4m3fn QuantizeLinear/DequantizeLinear
FP8_MAX = 448.0  # the largest float8e4m3fn
INT8_MAX = 127.0
_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass
class QuantizeReport:
    path: str
    source: str
    quantization: Quantization
    quantized_nodes: int  # MatMul/Gemm/Conv nodes with quantized inputs
    float_nodes: int  # nodes of those types kept float on purpose (significance logits, head)
    qdq_nodes: int
    token_pool_nodes: int
    unreadable: list[tuple[str, str]]  # calibration images that could not be read: (path, reason)
    validation_images: int
    top1_agreement: float  # with the float file, on VALIDATION_IMAGES structured images
    max_rel_error: float  # max abs error / max |logit|
    file_bytes: int
    source_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        q = self.quantization
        lines = [
            f"quantized {self.source} -> {self.path} ({self.file_bytes / 1e6:.1f} MB, was "
            f"{self.source_bytes / 1e6:.1f} MB; {self.seconds:.1f} s)",
            f"  {q.describe()}",
            f"  {self.quantized_nodes} {'/'.join(q.quantized_ops)} nodes quantized, {self.float_nodes} kept float, "
            f"{self.qdq_nodes} Q/DQ nodes; {self.token_pool_nodes} TokenPool nodes, float32",
            f"  validation vs the float file on {self.validation_images} images: top-1 agreement "
            f"{self.top1_agreement:.0%}, max abs error {self.max_rel_error:.1e} of the largest logit",
            f"  unreadable calibration images: {len(self.unreadable)} (skipped)",
        ]
        lines += [f"    {path}: {reason}" for path, reason in self.unreadable[:10]]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["unreadable"] = [{"path": p, "reason": r} for p, r in self.unreadable]
        return d


class CalibrationSet:
    """The calibration images as model inputs, in batches: files decoded and preprocessed as `eval` does, or the
    built-in structured images; counts them and hashes exactly what the calibrator sees."""

    def __init__(self, config: DataConfig, calib: str | None, limit: int | None, batch: int, fixed_batch: bool):
        self.config, self.batch, self.fixed_batch = config, batch, fixed_batch
        self.count = limit or DEFAULT_CALIBRATION_IMAGES
        self.paths = None
        if calib is not None:
            self.paths = open_dataset(calib, option="--calib").subset(self.count).paths
            self.count = len(self.paths)
        self.images, self.unreadable, self.dropped = 0, [], 0
        self.digest = hashlib.sha256()

    @property
    def source(self) -> str:
        return "built-in" if self.paths is None else "images"

    def _arrays(self, workers: int):
        if self.paths is None:
            for start in range(0, self.count, self.batch):
                seeds = range(BUILTIN_SEED + start, BUILTIN_SEED + min(start + self.batch, self.count))
                yield np.concatenate(
                    [sample_images(1, self.config.input_size, seed=s, config=self.config) for s in seeds]
                )
            return
        for b in decoded_batches(self.paths, [self.config], self.batch, workers):
            self.unreadable += [(self.paths[i], reason) for i, reason in b.unreadable]
            if b.indices:
                yield b.inputs[0]

    def batches(self, workers: int, progress_bar):
        """float32 [B, 3, S, S] arrays; a fixed-batch file takes whole batches only (the rest is dropped)."""
        done = 0
        for images in self._arrays(workers):
            if self.fixed_batch and len(images) != self.batch:
                self.dropped += len(images)
            else:
                images = np.ascontiguousarray(images, dtype=np.float32)
                self.digest.update(images.tobytes())
                self.images += len(images)
                yield images
            done = self.images + self.dropped + len(self.unreadable)
            progress_bar(done, self.count, len(self.unreadable))
        if done < self.count:  # unreadable images after the last readable one
            progress_bar(self.count, self.count, len(self.unreadable))


def head_nodes(graph) -> list[str]:
    """The classifier head(s): the Gemm/MatMul nodes reached walking back from the logits, not past a LayerNorm
    (distilled DeiT has two heads)."""
    producer = {out: node for node in graph.node for out in node.output}
    heads, stack, seen = [], [graph.output[0].name], set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        if node.op_type in ("Gemm", "MatMul"):
            heads.append(node.name)
        elif node.op_type != "LayerNormalization":
            stack.extend(node.input)
    return heads


def restore_float_inputs(graph, names: set[str]) -> None:
    """Give the nodes in `names`, and every TokenPool node, the float tensor where the quantizer gave them its
    Q -> DQ copy (it puts one pair on a tensor for all readers); drop the pairs nobody reads any more."""
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.name not in names and node.op_type != tokenpool.OP_TYPE:
            continue
        for j, name in enumerate(node.input):
            dq = producer.get(name)
            q = dq is not None and dq.op_type == "DequantizeLinear" and producer.get(dq.input[0])
            if q and q.op_type == "QuantizeLinear":
                node.input[j] = q.input[0]
    for _ in range(2):  # the DQs nobody reads, then their Qs
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        kept = [
            n
            for n in graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or any(o in read for o in n.output)
        ]
        del graph.node[:]
        graph.node.extend(kept)


def int8_to_fp8(graph) -> None:
    """Max-calibrated symmetric int8 Q/DQ -> float8e4m3fn Q/DQ (modelopt's recipe): scales x 448/127 (the same
    amax), zero points float8 zeros, the quantized tensors' types float8."""
    init = {t.name: t for t in graph.initializer}
    quantized = set()
    done = set()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale, zero = node.input[1], node.input[2]
        if scale not in done:
            value = numpy_helper.to_array(init[scale]) * np.float32(FP8_MAX / INT8_MAX)
            init[scale].CopyFrom(numpy_helper.from_array(value.astype(np.float32), scale))
            done.add(scale)
        if zero not in done:
            dims = list(init[zero].dims)
            zeros = np.zeros(int(np.prod(dims)) if dims else 1, np.uint8).tobytes()
            init[zero].CopyFrom(helper.make_tensor(zero, TensorProto.FLOAT8E4M3FN, dims, zeros, raw=True))
            done.add(zero)
        quantized.add(node.output[0] if node.op_type == "QuantizeLinear" else node.input[0])
    for value in graph.value_info:
        if value.name in quantized:
            value.type.tensor_type.elem_type = TensorProto.FLOAT8E4M3FN


def check_quantizable(model: OnnxFile, precision: str) -> None:
    """A float32 tpdeploy file, not quantized yet (an FP8 one needs opset >= 19)."""
    recipe = model.require_recipe("quantize")
    if model.spec.input.dtype != "float32" or recipe.dtype != "fp32":
        raise UserError(
            f"{model.path} is {model.spec.input.dtype}: quantize the float32 export (`build-engine --fp16` on the "
            f"quantized file gives float16 around its int8 layers)"
        )
    ops = sorted({n.op_type for n in model.proto.graph.node if n.op_type in QUANTIZED_GRAPH_OPS})
    if recipe.quantization is not None or ops:
        raise UserError(
            f"{model.path} is already quantized ({', '.join(ops) or recipe.quantization.precision}): quantize the "
            f"float32 file it came from"
        )
    if precision == "fp8" and (onnx_file.opset(model.proto) or 0) < FP8_MIN_OPSET:
        raise UserError(
            f"{model.path} has opset {onnx_file.opset(model.proto)}; FP8 Q/DQ needs opset >= {FP8_MIN_OPSET}: "
            f"re-export with --opset 20"
        )


def resolve_target(precision: str, target: str | None) -> str:
    """The default target: ort for int8, tensorrt for fp8 (the only one that runs FP8 natively)."""
    check_choice("precision", precision, QUANT_PRECISIONS)
    target = check_choice("target", target or ("tensorrt" if precision == "fp8" else "ort"), QUANT_TARGETS)
    if precision == "fp8" and target != "tensorrt":
        raise UserError(
            "--precision fp8 is for --target tensorrt (GPUs with FP8); onnxruntime runs FP8 on the CPU only by "
            "emulation, slower than float32"
        )
    return target


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime's quantizer logs advice (pre-processing, formats) on the root logger and prints its histogram
    calibration's steps: not the user's concern, and stdout is the report's."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _quantized_proto(ort_quant, proto, reader, excluded: list[str], method: str, target: str, precision: str, folder):
    """onnxruntime's static Q/DQ quantization of `proto` (written in a temporary folder inside `folder`)."""
    symmetric = target == "tensorrt"
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
        "QuantizeBias": not symmetric,
        "AddQDQPairToWeight": precision == "fp8",  # FP8 rescales float weights' Q/DQ; int8 stores int8 weights
    }
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=folder) as work:
        path = os.path.join(work, "quantized.onnx")
        try:
            with _quiet_quantizer():
                ort_quant.quantize_static(
                    proto,
                    path,
                    reader,
                    quant_format=ort_quant.QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANTIZED_OPS),
                    per_channel=True,
                    activation_type=ort_quant.QuantType.QInt8 if symmetric else ort_quant.QuantType.QUInt8,
                    weight_type=ort_quant.QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    calibrate_method=getattr(ort_quant.CalibrationMethod, _METHODS[method]),
                    extra_options=extra,
                )
        except UserError:  # from the calibration reader
            raise
        except Exception as e:  # the quantizer raises many types
            raise UserError(f"onnxruntime's quantizer failed: {type(e).__name__}: {one_line(e)}") from None
        return onnx.load(path)


def quantize(
    onnx_path: str,
    output: str,
    calib: str | None = None,
    limit: int | None = None,
    method: str = DEFAULT_METHOD,
    precision: str = DEFAULT_PRECISION,
    target: str | None = None,
    workers: int = DEFAULT_WORKERS,
    progress=lambda msg: None,
    note=lambda msg: None,
    progress_bar=lambda done, total, unreadable: None,
) -> QuantizeReport:
    """Quantize a float32 tpdeploy ONNX file into `output` (written whole, validated on onnxruntime against the
    float file first). `calib`: a folder of images (as `eval --data`); None: the built-in structured images."""
    start = time.perf_counter()
    check_output(output, inputs=[onnx_path, *data_inputs(calib)])
    check_choice("method", method, CALIBRATION_METHODS)
    target = resolve_target(precision, target)
    if limit is not None:
        check_int("limit", limit, minimum=1)
    check_int("workers", workers, minimum=1)
    model = OnnxFile.open(onnx_path)
    check_quantizable(model, precision)
    ort_quant = lazy_import("onnxruntime.quantization", "quantize")
    recipe, proto, graph = model.recipe, model.proto, model.proto.graph
    for i, node in enumerate(graph.node):
        node.name = node.name or f"node_{i}"  # the quantizer excludes nodes by name
    # onnxruntime's histogram methods stack every run's tensors, which must then be of one shape: one image a run
    batch = model.spec.fixed_batch or (CALIBRATION_BATCH if method == "minmax" else 1)
    calibration = CalibrationSet(recipe.data_config, calib, limit, batch, model.spec.fixed_batch)
    significance = {graph.node[i].name for i in float32_islands(graph, "quantize")}
    heads = head_nodes(graph)
    where = "built-in structured images" if calib is None else f"images of {calib}"
    if calib is None:
        note(
            "no --calib given: calibrating on built-in structured images, not on your data; their activation ranges "
            "fit generated pictures, not real ones: give --calib DIR (a few hundred of your images) for a file to ship"
        )
    progress(f"calibrating on {calibration.count} {where} ({method}; {precision} for {target})")

    class Reader(ort_quant.CalibrationDataReader):
        def __init__(self):
            self.batches = calibration.batches(workers, progress_bar)

        def get_next(self):
            images = next(self.batches, None)
            if images is None and not calibration.images:
                if not calibration.unreadable:
                    raise UserError(f"{onnx_path} takes batches of {batch}: calibrate on {batch} images at least")
                path, reason = calibration.unreadable[0]
                raise UserError(f"none of the {calibration.count} {where} could be used; e.g. {path}: {reason}")
            return None if images is None else {model.spec.input.name: images}

    folder = os.path.dirname(os.path.abspath(output))
    excluded = sorted(significance | set(heads))
    quantized = _quantized_proto(ort_quant, proto, Reader(), excluded, method, target, precision, folder)
    qgraph = quantized.graph
    restore_float_inputs(qgraph, significance | set(heads))
    if precision == "fp8":
        int8_to_fp8(qgraph)
    record = Quantization(
        precision=precision,
        target=target,
        method=method,
        activations="symmetric" if target == "tensorrt" else "asymmetric",
        calibration_source=calibration.source,
        calibration_images=calibration.images,
        calibration_sha256=calibration.digest.hexdigest(),
        quantized_ops=QUANTIZED_OPS,
        float_parts=FLOAT_PARTS,
    )
    onnx_file.write_recipe(quantized, dataclasses.replace(recipe, quantization=record))
    try:
        onnx.checker.check_model(quantized, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"the quantized model fails the ONNX checker: {one_line(e)}") from None
    notes = []
    if calibration.dropped:
        notes.append(f"{calibration.dropped} images left out: the file takes batches of {calibration.batch} only")
    with atomic_output(output, inputs=[onnx_path]) as tmp:
        progress(f"writing {output}; validating it on onnxruntime against {onnx_path}")
        onnx.save(quantized, tmp)
        images = sample_images(
            model.spec.fixed_batch or VALIDATION_IMAGES, model.spec.image_size, config=recipe.data_config
        )
        agreement, error = _validate(onnx_path, tmp, images)
        file_bytes = os.path.getsize(tmp)
    producer = {out: node for node in qgraph.node for out in node.output}
    ops = [n for n in qgraph.node if n.op_type in QUANTIZED_OPS]
    quantized_nodes = sum(
        any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input) for n in ops
    )
    return QuantizeReport(
        path=output,
        source=onnx_path,
        quantization=record,
        quantized_nodes=quantized_nodes,
        float_nodes=len(ops) - quantized_nodes,
        qdq_nodes=sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in qgraph.node),
        token_pool_nodes=len(onnx_file.token_pool_nodes(quantized)),
        unreadable=calibration.unreadable,
        validation_images=len(images),
        top1_agreement=agreement,
        max_rel_error=error,
        file_bytes=file_bytes,
        source_bytes=os.path.getsize(onnx_path),
        seconds=time.perf_counter() - start,
        notes=notes,
    )


def _validate(float_path: str, quantized_path: str, images: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and max abs error (relative to the largest logit) of the quantized file against the float
    one, on onnxruntime."""
    from tpdeploy.runtime.onnxrt import OnnxRuntimeRunner

    want = OnnxRuntimeRunner(float_path).infer(images)
    got = OnnxRuntimeRunner(quantized_path).infer(images)
    error = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))
    return float((got.argmax(1) == want.argmax(1)).mean()), error
