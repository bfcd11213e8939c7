"""The `tpdeploy` command line.

Every error is one line `error: ...` on stderr, never a traceback: exit 1 for a user's mistake, 2 for a usage
error (a bad option), 3 for a fault of the machine or the engine (`tpdeploy.errors`); 130 after Ctrl+C and 143
after SIGTERM, which leave no partial output (SIGTERM is turned into an exception so that every temporary file
is removed on the way out). Set TPDEPLOY_DEBUG=1 to see the traceback of an unexpected error.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time

import click

from tpdeploy import schedule as sched
from tpdeploy.errors import TpdeployError, UserError, one_line

DEFAULT_ARCH = "deit_small"


def progress(msg: str) -> None:
    click.echo(msg, err=True)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT."""


def _on_sigterm(signum, frame):
    raise Terminated()


class Cli(click.Group):
    def main(self, args=None, prog_name=None, **extra):
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.ClickException as e:  # usage errors: one line too, with where to look
            command = f"{e.ctx.command_path} --help" if getattr(e, "ctx", None) else "tpdeploy --help"
            click.echo(f"error: {e.format_message()} (see `{command}`)", err=True)
            code = e.exit_code
        except TpdeployError as e:
            click.echo(f"error: {e}", err=True)
            code = e.exit_code
        except (KeyboardInterrupt, click.exceptions.Abort):  # click turns Ctrl+C inside a command into Abort
            click.echo("error: interrupted", err=True)
            code = 130
        except Terminated:
            click.echo("error: terminated (SIGTERM)", err=True)
            code = 143
        except Exception as e:  # noqa: BLE001 - never a traceback: a bug or a fault below us
            if os.environ.get("TPDEPLOY_DEBUG"):
                raise
            click.echo(f"error: unexpected {type(e).__name__}: {one_line(e)}"
                       f" (a fault of the machine or a bug in tpdeploy; TPDEPLOY_DEBUG=1 shows the traceback)", err=True)
            code = 3
        sys.exit(code or 0)


class Number(click.ParamType):
    """A finite float, at least (or, `open`, more than) `minimum`: click's FloatRange lets NaN through."""
    name = "number"

    def __init__(self, minimum: float = 0.0, open: bool = False):  # noqa: A002 - click's own word
        self.minimum, self.open = minimum, open

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x) or x < self.minimum or (self.open and x == self.minimum):
            self.fail(f"{value!r} is not a finite number {'>' if self.open else '>='} {self.minimum:g}", param, ctx)
        return x


POSITIVE = click.IntRange(min=1)


def options(*opts):
    """An argument group: one decorator applying several click options."""
    return lambda f: functools.reduce(lambda acc, opt: opt(acc), reversed(opts), f)


model_options = options(
    click.option("--arch", help=f"a registered architecture, by its name or timm's (see `tpdeploy archs`; default: the "
                 f"preset's, else {DEFAULT_ARCH})"),
    click.option("--checkpoint", help="timm/DeiT state dict of that architecture (.pth, .pt, .bin, .safetensors); "
                 "default: seeded-random"),
    click.option("--flops-ratio", type=Number(0.0, open=True), help="solve the schedule for this fraction of dense "
                 "GMACs, e.g. 0.58"),
    click.option("--preset", help="a schedule preset from models/ (see `tpdeploy presets`) or a .toml file"),
    click.option("--schedule", help="patch tokens entering each block (one entry per block), e.g. 196,196,160,..."),
    click.option("--method", type=click.Choice(sched.METHODS), help=f"pooling method (default {sched.DEFAULT_METHOD})"),
    click.option("--iterations", type=click.IntRange(min=0), help=f"clustering iterations T (default "
                 f"{sched.DEFAULT_ITERATIONS})"),
)
backend_options = options(
    click.option("--backend", type=click.Choice(["ort", "trt", "torch"]), help="default: by file type"),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
    click.option("--plugin", help="TokenPool plugin library for engines (default: found automatically)"),
    click.option("--checkpoint", help="torch backend: the checkpoint the ONNX file was exported from"),
)


def build_model(arch, checkpoint, flops_ratio, preset, schedule, method, iterations):
    from tpdeploy.optional import lazy_import
    create_model = lazy_import("tpdeploy.model", "building a model").create_model
    if arch is None:
        arch = sched.load_preset(preset).arch if preset else DEFAULT_ARCH
    tokens = None
    if schedule is not None:
        try:
            tokens = [int(t) for t in schedule.replace(" ", "").split(",") if t]
        except ValueError:
            raise UserError(f"--schedule must be comma-separated integers, got {schedule!r}") from None
    model = create_model(arch, checkpoint=checkpoint, flops_ratio=flops_ratio, preset=preset, schedule=tokens,
                         method=method, iterations=iterations)
    if model.checkpoint is None:
        progress(f"note: no --checkpoint given: {model.cfg.name} has seeded-random weights (seed {model.seed})")
    return model


def model_summary(model) -> dict:
    d = model.cfg.dims
    dense = sched.macs(sched.dense(d), d)
    return {"arch": model.cfg.name, "method": model.method, "iterations": model.iterations,
            "tokens": list(model.tokens), "gmacs": model.macs / 1e9, "gmacs_dense": dense / 1e9,
            "flops_ratio": model.macs / dense, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "pooling_steps": len(model.pools), "checkpoint": model.checkpoint,
            "data_config": model.cfg.data_config.describe()}


def format_summary(s: dict) -> str:
    weights = s["checkpoint"] or "seeded-random (no checkpoint)"
    lines = [f"{s['arch']}  method {s['method']}  iterations {s['iterations']}  weights {weights}",
             f"{'block':>5} {'tokens':>7}"]
    prev = None
    for i, t in enumerate(s["tokens"], start=1):
        mark = "  <- pooled" if prev is not None and t < prev else ""
        lines.append(f"{i:>5} {t:>7}{mark}")
        prev = t
    lines.append(f"GMACs {s['gmacs']:.3f} pooled vs {s['gmacs_dense']:.3f} dense ({s['flops_ratio']:.3f}x), "
                 f"{s['pooling_steps']} pooling steps, {s['params_m']:.2f} M params")
    lines.append(f"preprocessing: {s['data_config']}")
    return "\n".join(lines)


def write_json(path: str, data: dict, inputs=()) -> None:
    from tpdeploy.artifacts.files import write_text
    write_text(path, json.dumps(data, indent=2) + "\n", inputs)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tpdeploy")
def main():
    """Deploy Token-Pooled vision transformers: export to ONNX, build TensorRT engines, benchmark, serve."""


@main.command()
@click.argument("model_file", required=False)
@model_options
@click.option("--json", "as_json", is_flag=True, help="print a JSON object")
def info(model_file, as_json, **model_args):
    """What a model is: from the model options, or from an exported .onnx / built engine file."""
    if model_file:
        if any(v is not None for v in model_args.values()):
            raise UserError("give either a model file or model options, not both")
        from tpdeploy.modelinfo import describe_file
        data = describe_file(model_file)
        click.echo(json.dumps(data, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in data.items()))
        return
    data = model_summary(build_model(**model_args))
    click.echo(json.dumps(data, indent=2) if as_json else format_summary(data))


@main.command()
def presets():
    """List the schedule presets shipped under models/."""
    found = sched.presets()
    name_width, arch_width = max(map(len, found)), max(len(p.arch) for p in found.values())
    for name, p in found.items():
        click.echo(f"{name:<{name_width}}  {p.arch:<{arch_width}}  {p.method:<10} {len(p.tokens):>2} blocks, "
                   f"{p.tokens[0]:>3} -> {p.tokens[-1]:<3} tokens  {p.description}")


@main.command()
@model_options
@click.option("-o", "--output", required=True, help="the ONNX file to write")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--batch", type=POSITIVE, help="fix the batch size (default: dynamic)")
@click.option("--opset", type=click.IntRange(min=1), default=None, help="ai.onnx opset (default 20; at least 18)")
def export(output, dtype, batch, opset, **model_args):
    """Export a Token-Pooled ViT to ONNX with tpdeploy::TokenPool nodes, then validate it against PyTorch."""
    from tpdeploy.artifacts.files import check_output
    from tpdeploy.optional import lazy_import
    inputs = [model_args["checkpoint"], model_args["preset"]]
    check_output(output, inputs=inputs)  # before the slow work
    stage = lazy_import("tpdeploy.export", "export")
    model = build_model(**model_args)
    summary = model_summary(model)
    report = stage.export(model, output, dtype=dtype, batch=batch, opset=opset or stage.DEFAULT_OPSET, inputs=inputs,
                          progress=progress)
    shape = f"batch {batch}" if batch else "dynamic batch"
    click.echo(f"exported {output} ({report.file_bytes / 1e6:.1f} MB, opset {report.opset}, {shape}, {dtype}, "
               f"{report.token_pool_nodes} TokenPool nodes)")
    click.echo(format_summary(summary))
    click.echo(f"validation vs PyTorch fp32 on {batch or 2} images: max abs error {report.max_abs_error:.2e} "
               f"({report.max_rel_error:.1e} of the largest logit), top-1 agreement {report.top1_agreement:.0%}")


def _split_spec(spec: str) -> tuple[str | None, str]:
    """A model reference: a path, optionally prefixed by its backend (ort:, trt:, torch:) -> (backend, path)."""
    from tpdeploy import runtime
    prefix, _, rest = spec.partition(":")
    return (prefix, rest) if rest and prefix in runtime.BACKENDS else (None, spec)


def _path_of(spec: str) -> str:
    return _split_spec(spec)[1]


def _runner(spec: str, backend: str | None, device: str, threads: int | None = None, plugin: str | None = None,
            checkpoint: str | None = None, spinning: bool = True):
    from tpdeploy import runtime
    prefix, spec = _split_spec(spec)
    backend = prefix or backend
    progress(f"loading {spec} ({backend or runtime.default_backend(spec)}, {device})")
    return runtime.load(spec, backend=backend, device=device, plugin=plugin, threads=threads, checkpoint=checkpoint,
                        spinning=spinning)


def _runners(models: list[str], backend, device, threads, plugin, checkpoint, sharing: str | None = None) -> list:
    """Runners for `models`. Where they take turns in one process, or with other work (`sharing` says which),
    onnxruntime's idle threads must not spin: they would steal the cores of what runs (see `OnnxRuntimeRunner`)."""
    if len(models) > 1:
        sharing = "several models take turns on these cores"
    runners = [_runner(m, backend, device, threads, plugin, checkpoint, spinning=not sharing) for m in models]
    if sharing and any(r.backend.startswith("onnxruntime") for r in runners):
        progress(f"note: {sharing}: onnxruntime's idle-thread spinning is off")
    return runners


@main.command()
@click.argument("model_file")
@backend_options
@click.option("--batch", type=POSITIVE, default=1, show_default=True)
@click.option("--warmup-ms", type=Number(0.0), default=500.0, show_default=True)
@click.option("--iterations", type=POSITIVE, help="timed rounds (default: run for --duration)")
@click.option("--duration", type=Number(0.0, open=True), default=5.0, show_default=True,
              help="seconds of timed rounds")
@click.option("--threads", type=POSITIVE, help="intra-op threads (CPU backends)")
@click.option("--baseline", help="a second model (e.g. the dense model) timed interleaved in the same run")
@click.option("--no-cuda-graph", is_flag=True, help="TensorRT: enqueue directly instead of replaying a CUDA graph")
@click.option("--include-transfers", is_flag=True, help="TensorRT: time host-device copies too (trtexec 11 does not)")
@click.option("--json", "json_path", help="also write the results to this JSON file")
def bench(model_file, backend, device, plugin, checkpoint, batch, warmup_ms, iterations, duration, threads, baseline,
          no_cuda_graph, include_transfers, json_path):
    """Latency and throughput like trtexec (min/mean/median/p90/p95/p99/max)."""
    from tpdeploy import bench as b
    from tpdeploy.artifacts.files import check_output
    from tpdeploy.images import sample_images
    models = [model_file] + ([baseline] if baseline else [])
    if json_path:
        check_output(json_path, inputs=[_path_of(m) for m in models] + [checkpoint, plugin])
    runners = _runners(models, backend, device, threads, plugin, checkpoint)
    images = sample_images(batch, runners[0].image_size, config=runners[0].data_config)
    for r in runners:
        r.check_input(images)
    calls = [r.timed_call(images, not no_cuda_graph, include_transfers) if hasattr(r, "timed_call")
             else functools.partial(r.infer, images) for r in runners]
    times = b.measure(calls, warmup_ms, iterations, duration, progress)
    stats = [b.LatencyStats.of(t, batch) for t in times]
    click.echo(b.table(list(zip([os.path.basename(n) for n in models], stats))))
    result = {"model": model_file, "backend": runners[0].backend, "batch": batch, **stats[0].to_json(),
              "onnxruntime_spinning": len(runners) == 1, "machine": b.machine()}
    if baseline:
        speedup = stats[1].median / stats[0].median
        click.echo(f"speed-up vs baseline (median latency ratio): {speedup:.2f}x")
        result["baseline"] = {"model": baseline, **stats[1].to_json()}
        result["speedup"] = speedup
    if json_path:
        write_json(json_path, result, inputs=[_path_of(m) for m in models])


@main.command()
@click.argument("model_a")
@click.argument("model_b", required=False)
@click.option("--batch", type=POSITIVE, default=4, show_default=True)
@click.option("--atol", type=Number(0.0), default=1e-4, show_default=True)
@click.option("--rtol", type=Number(0.0), default=1e-3, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--plugin", help="TokenPool plugin library for engines (default: found automatically)")
@click.option("--checkpoint", help="for the torch: side, the checkpoint MODEL_A was exported from")
def compare(model_a, model_b, batch, atol, rtol, device, plugin, checkpoint):
    """Run MODEL_A and MODEL_B (default: the PyTorch model MODEL_A was exported from) on the same images.

    Each is a path, optionally prefixed by a backend: ort:x.onnx, trt:x.plan, torch:x.onnx. Exits 1 when any
    logit is out of tolerance (|a - b| > atol + rtol * |b|)."""
    from tpdeploy.compare import compare_outputs
    from tpdeploy.images import sample_images
    model_b = model_b or f"torch:{_path_of(model_a)}"
    a = _runner(model_a, None, device, plugin=plugin, checkpoint=checkpoint)
    b = _runner(model_b, None, device, plugin=plugin, checkpoint=checkpoint)
    if a.image_size != b.image_size:
        raise UserError(f"{model_a} takes {a.image_size} px images, {model_b} {b.image_size} px: not comparable")
    images = sample_images(batch, a.image_size, config=a.data_config)
    result = compare_outputs(a.infer(images), b.infer(images), atol, rtol)
    click.echo(f"{model_a} vs {model_b} on {batch} images")
    click.echo(f"  max abs error {result.max_abs_error:.3e}  max rel error {result.max_rel_error:.3e}  "
               f"mean abs error {result.mean_abs_error:.3e}  top-1 agreement {result.top1_agreement:.1%}")
    verdict = "PASSED" if result.passed else "FAILED"
    click.echo(f"{verdict} (atol {atol:g}, rtol {rtol:g})")
    if not result.passed:
        sys.exit(1)


@main.command("build-engine")
@click.argument("onnx_file")
@click.option("-o", "--output", required=True, help="the engine (.plan) to write; a .json sidecar goes beside it")
@click.option("--fp16", is_flag=True, help="float16 engine (the graph is converted; significance stays float32)")
@click.option("--min-batch", type=POSITIVE, help="profile minimum batch (default 1)")
@click.option("--opt-batch", type=POSITIVE, help="profile batch to tune for (default 8)")
@click.option("--max-batch", type=POSITIVE, help="profile maximum batch (default 32)")
@click.option("--workspace", type=POSITIVE, help="workspace limit in MiB (default: TensorRT's)")
@click.option("--timing-cache", help="read and update this timing cache file (faster rebuilds)")
@click.option("--plugin", help="TokenPool plugin library (default: found automatically)")
@click.option("--no-plugin", is_flag=True, help="inline the TokenPool ONNX function instead of using the plugin")
def build_engine(onnx_file, output, fp16, min_batch, opt_batch, max_batch, workspace, timing_cache, plugin, no_plugin):
    """Build a TensorRT engine from an exported ONNX file, with the TokenPool plugin."""
    from tpdeploy import engine
    from tpdeploy.backends.trt import import_tensorrt
    plan = engine.plan_build(onnx_file, output, fp16, min_batch, opt_batch, max_batch, workspace, timing_cache,
                             plugin, no_plugin)
    import_tensorrt()  # after the plan: a mistake in the arguments is reported first
    sidecar = engine.build(plan, progress)
    click.echo(f"built {output} ({sidecar.describe()}, batch {plan.profile()}, {plan.spec.input.dtype}, "
               f"{'plugin ' + plan.plugin if plan.plugin else 'no plugin'})")


@main.command()
@click.argument("model_file")
@click.option("--backend", type=click.Choice(["ort", "trt", "torch"]), help="default: by file type")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address the HTTP, gRPC and metrics endpoints listen on (0.0.0.0: every interface)")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True,
              help="Prometheus metrics at /metrics (0: off)")
@click.option("--max-batch", type=POSITIVE, default=32, show_default=True,
              help="largest batch the dynamic batcher forms (Triton max_batch_size)")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=500, show_default=True,
              help="how long a request may wait for others to join its batch")
@click.option("--instances", type=POSITIVE, default=1, show_default=True,
              help="model instances: batches executed concurrently (one shared, thread-safe runner)")
@click.option("--name", help="Triton model name (default: the file name); the image classifier is NAME_classify")
@click.option("--threads", type=POSITIVE, help="intra-op threads (CPU backends)")
@click.option("--plugin", help="TokenPool plugin library for engines (default: found automatically)")
@click.option("--verbose", is_flag=True, help="show Triton Inference Server's own log")
def serve(model_file, backend, device, host, http_port, grpc_port, metrics_port, max_batch, max_queue_delay_us,
          instances, name, threads, plugin, verbose):
    """Serve MODEL_FILE on NVIDIA Triton Inference Server (through PyTriton) until Ctrl+C or SIGTERM.

    Two models: NAME (images FP32 [B, 3, S, S] -> logits, dynamically batched) and NAME_classify (JPEG/PNG
    bytes -> top-5 classes and probabilities, with the model's recorded preprocessing). Health: /v2/health/ready
    (200 once both models are loaded); metrics: :METRICS_PORT/metrics. Bad requests get HTTP 400 in one line.
    SIGINT or SIGTERM, start-up included, stops it within 10 s (exit 0); a backend that breaks stops it (exit 3)."""
    from tpdeploy.optional import lazy_import
    from tpdeploy.serving.settings import ServeSettings
    settings = ServeSettings(model_file, backend=backend, device=device, plugin=plugin, threads=threads, name=name,
                             host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port or None,
                             max_batch=max_batch, max_queue_delay_us=max_queue_delay_us, instances=instances,
                             verbose=verbose)
    lazy_import("tpdeploy.serving.lifecycle", "serving").serve(settings, progress=progress)


@main.command("triton-repo")
@click.argument("model_file")
@click.option("--repository", required=True, help="the Triton model repository folder (created if missing)")
@click.option("--name", help="model name in the repository (default: the file name)")
@click.option("--max-batch", type=POSITIVE, default=32, show_default=True, help="max_batch_size")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=500, show_default=True,
              help="dynamic batching max_queue_delay_microseconds")
@click.option("--instances", type=POSITIVE, default=1, show_default=True, help="instance_group count")
@click.option("--plugin", help="TokenPool plugin library to put beside an engine (default: found automatically)")
@click.option("--overwrite", is_flag=True, help="replace the model's folder if it exists")
def triton_repo(model_file, repository, name, max_batch, max_queue_delay_us, instances, plugin, overwrite):
    """Write a Triton model repository entry for MODEL_FILE: onnxruntime_onnx for an .onnx file, tensorrt_plan
    (with the TokenPool plugin library) for an engine. Prints the tritonserver command line."""
    from tpdeploy.triton_repo import write_repository
    report = write_repository(model_file, repository, name=name, max_batch=max_batch,
                              max_queue_delay_us=max_queue_delay_us, instances=instances, plugin=plugin,
                              overwrite=overwrite, progress=progress)
    for note in report.notes:
        progress(f"note: {note}")
    click.echo(f"wrote {report.model_dir} ({report.platform})" +
               (f" with the plugin {report.plugin}" if report.plugin else ""))
    click.echo("start Triton Inference Server with:")
    for command in report.commands:
        click.echo(f"  {command}")
    click.echo(f"(see {os.path.join(report.model_dir, 'README.txt')})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
def archs(as_json):
    """List the registered architectures: the timm weights each data config is for, size, params, dense GMACs,
    preprocessing and the shipped presets."""
    from tpdeploy.optional import lazy_import
    registry = lazy_import("tpdeploy.model", "listing architectures")
    presets = sched.presets()
    rows = []
    for name in registry.list_archs():
        cfg = registry.get_config(name)
        d = cfg.dims
        rows.append({"arch": name, "timm": f"{cfg.timm_name}.{cfg.timm_tag}", "blocks": cfg.depth,
                     "embed_dim": cfg.embed_dim, "prefix_tokens": cfg.num_prefix_tokens, "patch_tokens": d.num_patches,
                     "params_m": registry.parameter_count(cfg) / 1e6, "gmacs_dense": sched.macs(sched.dense(d), d) / 1e9,
                     "data_config": dataclasses.asdict(cfg.data_config),
                     "presets": [p for p, preset in presets.items() if preset.arch == name]})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'arch':<33} {'blocks':>6} {'dim':>5} {'tokens':>7} {'params M':>8} {'GMACs':>7}  {'input':<16} "
               f"{'mean / std':<37} {'timm weights':<22} presets (arch_...)")
    numbers = lambda v: f"{v[0]:g}" if len(set(v)) == 1 else ",".join(f"{x:g}" for x in v)  # noqa: E731
    for r in rows:
        dc = r["data_config"]
        tokens = f"{r['prefix_tokens']}+{r['patch_tokens']}"
        size = f"{dc['input_size']} {dc['interpolation']} {dc['crop_pct']:g}"
        norm = f"{numbers(dc['mean'])} / {numbers(dc['std'])}"
        presets_here = ", ".join(p.removeprefix(r["arch"] + "_") for p in r["presets"]) or "-"
        click.echo(f"{r['arch']:<33} {r['blocks']:>6} {r['embed_dim']:>5} {tokens:>7} {r['params_m']:>8.2f} "
                   f"{r['gmacs_dense']:>7.2f}  {size:<16} {norm:<37} {r['timm'].partition('.')[2]:<22} {presets_here}")
    click.echo("tokens: prefix (CLS, distillation) + patch tokens; input: size, resize interpolation, crop_pct; the "
               "data config is that of timm's weights `<timm name>.<tag>` (`--json` has every field)")


class ProgressBar:
    """`done/total` on stderr: redrawn in place on a terminal, one line every few seconds in a log."""

    def __init__(self, label: str, every_s: float = 5.0):
        self.label, self.every_s = label, every_s
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int, unreadable: int = 0) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < (0.2 if self.tty else self.every_s):
            return
        self.last = now
        filled = 30 * done // max(total, 1)
        text = (f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} images, "
                f"{done / max(now - self.start, 1e-9):.1f}/s, {unreadable} unreadable")
        click.echo("\r" + text if self.tty else text, err=True, nl=not self.tty or done >= total)


@main.command("eval")
@click.argument("model_file")
@click.option("--data", required=True, help="class folders (ImageNet synset folders too), or a flat folder of images")
@click.option("--labels", help="for a flat --data folder: a file,label CSV, an ImageId,PredictionString CSV, or the "
              "ILSVRC2012 devkit's validation ground truth (with meta.mat beside it) or devkit folder")
@backend_options
@click.option("--batch", type=POSITIVE, help="images per inference call (default 16, or the file's fixed batch)")
@click.option("--workers", type=POSITIVE, default=2, show_default=True, help="threads decoding images")
@click.option("--limit", type=POSITIVE, help="evaluate N images, spread evenly over the folder")
@click.option("--threads", type=POSITIVE, help="intra-op threads (CPU backends)")
@click.option("--baseline", help="a second model (e.g. dense DeiT) on the same images: its accuracy and the two "
              "models' top-1 agreement")
@click.option("--json", "json_path", help="also write the results to this JSON file")
def eval_command(model_file, data, labels, backend, device, plugin, checkpoint, batch, workers, limit, threads,
                 baseline, json_path):
    """Top-1 and top-5 accuracy (with standard errors) of MODEL_FILE on --data, preprocessed as recorded in the
    file; with --baseline, both models on the same images and their top-1 agreement."""
    from tpdeploy import evaluate
    from tpdeploy.artifacts.files import check_output
    from tpdeploy.bench import machine
    models = [model_file] + ([baseline] if baseline else [])
    inputs = [_path_of(m) for m in models] + [labels, checkpoint, plugin]
    if json_path:
        check_output(json_path, inputs=inputs)
    runners = _runners(models, backend, device, threads, plugin, checkpoint,
                       sharing="the decoding threads share these cores")
    if len({r.num_classes for r in runners}) > 1:
        raise UserError(f"{model_file} and {baseline} have different numbers of classes: not comparable")
    dataset = evaluate.open_dataset(data, labels, runners[0].num_classes)
    if limit:
        dataset = dataset.subset(limit)
    if dataset.labels is None and not baseline:
        raise UserError(f"--data {data} has no labels (no class folders, no --labels): give --baseline MODEL to "
                        f"measure the top-1 agreement of two models")
    batch = batch or min([16] + [r.max_batch for r in runners if r.max_batch])
    progress(f"evaluating {len(dataset)} images of {data} ({dataset.layout})")
    report = evaluate.evaluate(runners, dataset, batch, workers, names=[os.path.basename(_path_of(m)) for m in models],
                               progress=ProgressBar("eval"))
    click.echo(report.format())
    if json_path:
        write_json(json_path, {"model": model_file, "baseline": baseline, **report.to_json(), "machine": machine()},
                   inputs=inputs)


@main.command()
@click.option("--arch", default=DEFAULT_ARCH, show_default=True, help="the architecture to sweep")
@click.option("--checkpoint", help="timm/DeiT state dict (default: seeded-random weights)")
@click.option("--methods", default="wkmedoids,kmedoids,topk,grid", show_default=True,
              help="pooling methods, comma-separated")
@click.option("--ratios", default="0.45,0.58,0.75", show_default=True, help="FLOPs ratios, comma-separated")
@click.option("--data", help="images as for `tpdeploy eval` (default: generated images, agreement with dense)")
@click.option("--labels", help="labels file for a flat --data folder (as for `tpdeploy eval`)")
@click.option("--limit", type=POSITIVE, help="evaluate N images, spread evenly (without --data: generate N; default "
              "200)")
@click.option("--backend", type=click.Choice(["ort", "torch"]), default="ort", show_default=True)
@click.option("--batch", type=POSITIVE, default=8, show_default=True, help="batch for evaluation and timing")
@click.option("--workers", type=POSITIVE, default=2, show_default=True, help="threads decoding images")
@click.option("--threads", type=POSITIVE, help="intra-op threads (CPU backends)")
@click.option("--duration", type=Number(0.0, open=True), default=3.0, show_default=True,
              help="seconds of interleaved timing per point (and 10 rounds at least)")
@click.option("--warmup-ms", type=Number(0.0), default=300.0, show_default=True)
@click.option("-o", "--output", "out_dir", required=True, help="folder for results.csv, results.json, sweep.png "
              "(an interrupted sweep resumes there)")
def sweep(arch, checkpoint, methods, ratios, data, labels, limit, backend, batch, workers, threads, duration,
          warmup_ms, out_dir):
    """Accuracy against GMACs and measured latency for every pooling method and FLOPs ratio, and dense: the
    paper's comparison on your data and hardware."""
    from tpdeploy.optional import lazy_import
    stage = lazy_import("tpdeploy.sweep", "sweep")
    plan = stage.SweepPlan(arch, checkpoint, stage.parse_list("methods", methods, str),
                           stage.parse_list("ratios", ratios, float), out_dir, data=data, labels=labels, limit=limit,
                           backend=backend, batch=batch, workers=workers, threads=threads, duration_s=duration,
                           warmup_ms=warmup_ms)
    job = stage.Sweep(plan, progress)
    if job.dense_model.checkpoint is None:
        progress(f"note: no --checkpoint given: {job.dense_model.cfg.name} has seeded-random weights (seed "
                 f"{job.dense_model.seed})")
    for point in job.run(progress_bar=ProgressBar):
        acc, se = point.accuracy
        progress(f"  {point.label}: {point.gmacs:.2f} GMACs, {point.relative_latency:.2f}x dense latency, "
                 f"{'top-1' if point.top1 is not None else 'agreement'} {acc:.1%} ± {se:.1%}")
    figure = job.draw()
    click.echo(stage.format_points(job.points))
    click.echo(f"wrote {os.path.join(out_dir, stage.RESULTS_CSV)}, {os.path.join(out_dir, stage.RESULTS_JSON)} and "
               f"{figure}")
