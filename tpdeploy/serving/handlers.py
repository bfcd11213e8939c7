"""Request handling for the served models, on any Runner; no PyTriton here (PyTriton calls these with its requests).

- `infer_images(requests)`: `images` FP32 [B, 3, S, S] -> `logits`; the dynamic batcher hands several requests at
  once, run as one batch.
- `classify(requests)`: `image` BYTES [B, 1] (encoded JPEG/PNG/WebP files) -> top-5 `classes` INT64 and `scores`
  FP32, preprocessed with the model's recorded data config (`tpdeploy.data.preprocess`). One request per call (Triton's
  default scheduler), so a bad image fails only its own request.

What goes wrong is raised as one of two exceptions, whose one-line message is all a client sees (the Triton stub
maps them to statuses, through `STATUS_MARKER`):

- `RequestRefused`: the request's own mistake (an undecodable or oversized image, an empty request): HTTP 400,
  gRPC INVALID_ARGUMENT.
- `RequestFailed`: a fault of the backend or a bug: HTTP 500, gRPC INTERNAL, logged here. After a backend fault the
  model is probed once with the warm-up batch; if that fails too the model is broken: `on_broken(reason)` is called
  (once; the service reports it and stops, so readiness turns red) and every later request fails at once.
"""

from __future__ import annotations

import collections
import json
import logging
import threading

import numpy as np

from tpdeploy.data.preprocess import preprocess_image
from tpdeploy.errors import TpdeployError, UserError, one_line
from tpdeploy.runtime.base import Runner

LOG = logging.getLogger("tpdeploy.serve")
TOP_K = 5
# an encoded image larger than this is refused before decoding: the model sees 224 px, and a 50-megapixel photo
# costs ~150 MB and a second of CPU to decode and resize (send images resized to about 1000 px)
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000


# How a request's error reaches Triton's Python-backend stub: PyTriton hands the stub the inference callable's
# formatted traceback, whose last line is "<type>: <str(exception)>", and a RequestError's str() is this marker and a
# JSON object {"status": Triton's error code, "message": the one line for the client}. triton_stub/tpdeploy_model.py,
# which imports nothing of tpdeploy, spells the same marker (tests/test_serve.py checks that it does).
STATUS_MARKER = "tpdeploy-request-status:"


class RequestError(Exception):
    """A request that gets an error status (`status`, Triton's code) with the one-line `message`."""

    status = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return STATUS_MARKER + json.dumps({"status": self.status, "message": self.message})


class RequestRefused(RequestError):
    """A bad request: HTTP 400 / gRPC INVALID_ARGUMENT with this one-line message."""

    status = "INVALID_ARG"


class RequestFailed(RequestError):
    """The server failed on a valid request: HTTP 500 / gRPC INTERNAL with this one-line message (logged here)."""

    status = "INTERNAL"


def top_classes(logits: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Top-k classes (int64, best first; ties: lowest index) and their softmax probabilities (float32)."""
    logits = np.asarray(logits, dtype=np.float64)
    k = min(k, logits.shape[1])
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(probs, order, axis=1).astype(np.float32)


class BatchStats:
    """What a model was handed: executions, requests and images (per batch size), and refused/failed requests."""

    def __init__(self):
        self._lock = threading.Lock()
        self.executions = self.requests = self.images = self.refused = self.failed = 0
        self.batch_sizes: collections.Counter = collections.Counter()

    def record(self, requests: int, images: int) -> None:
        with self._lock:
            self.executions += 1
            self.requests += requests
            self.images += images
            self.batch_sizes[images] += 1

    def record_error(self, refused: bool) -> None:
        with self._lock:
            if refused:
                self.refused += 1
            else:
                self.failed += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "executions": self.executions,
                "requests": self.requests,
                "images": self.images,
                "refused": self.refused,
                "failed": self.failed,
                "mean_batch": self.images / self.executions if self.executions else 0.0,
                "batch_sizes": dict(sorted(self.batch_sizes.items())),
            }

    def describe(self) -> str:
        s = self.snapshot()
        return (
            f"{s['requests']} requests, {s['images']} images in {s['executions']} executions (mean batch "
            f"{s['mean_batch']:.2f}), {s['refused']} refused, {s['failed']} failed"
        )


def _as_bytes(item) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
        return bytes(item)
    raise RequestRefused(f"image must be BYTES (the encoded file), got {type(item).__name__}")


class ModelHandlers:
    """The request handlers of the two models served from one Runner (thread-safe, shared by every instance)."""

    def __init__(
        self, runner: Runner, name: str = "model", max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, on_broken=None
    ):
        self.runner = runner
        self.name, self.classify_name = name, f"{name}_classify"
        self.max_image_pixels = max_image_pixels
        self.on_broken = on_broken
        self.reset_stats()
        self.broken: str | None = None  # why the backend no longer answers
        self._probe_lock = threading.Lock()
        self.warmup_batch = np.zeros(
            (max(1, runner.min_batch), 3, runner.image_size, runner.image_size), runner.input_dtype
        )
        # a fault here is the caller's to report
        self.num_classes = int(self.runner.run_any(self.warmup_batch).shape[1])

    def reset_stats(self) -> None:
        self.images_stats, self.classify_stats = BatchStats(), BatchStats()

    def _logits(self, images: np.ndarray, model: str) -> np.ndarray:
        """`Runner.run_any`, with backend faults turned into RequestFailed (and a broken backend reported once)."""
        if self.broken:
            raise RequestFailed(f"{model}: the backend is broken ({self.broken}); the server is stopping")
        try:
            return self.runner.run_any(images)
        except UserError as e:  # the Runner's own input checks: the request's mistake
            raise RequestRefused(str(e)) from None
        except Exception as e:  # DeviceError or a bug: a 500, never a traceback to the client
            if isinstance(e, TpdeployError):
                LOG.error("%s: backend fault: %s", model, e)
            else:
                LOG.exception("%s: unexpected error", model)
            self._probe(one_line(e))
            raise RequestFailed(f"{model}: the server failed to run the model: {one_line(e)}") from None

    def _probe(self, fault: str) -> None:
        """After a fault: does the backend still answer the warm-up batch? If not, it is broken (reported once)."""
        with self._probe_lock:
            if self.broken:
                return
            try:
                self.runner.run_any(self.warmup_batch)
                return
            except Exception as e:  # any failure of a batch that worked at start-up
                self.broken = f"{fault}; the warm-up batch fails too: {one_line(e)}"
        if self.on_broken is not None:
            self.on_broken(self.broken)

    def infer_images(self, requests) -> list[dict]:
        """PyTriton callable of the images model: [B, 3, S, S] per request, run as one batch."""
        stats = self.images_stats
        try:
            arrays = [np.asarray(req["images"]) for req in requests]
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            logits = self._logits(batch, self.name)
        except (RequestRefused, RequestFailed) as e:
            stats.record_error(isinstance(e, RequestRefused))
            raise
        stats.record(len(requests), batch.shape[0])
        out, i = [], 0
        for a in arrays:
            out.append({"logits": logits[i : i + a.shape[0]]})
            i += a.shape[0]
        return out

    def classify(self, requests) -> list[dict]:
        """PyTriton callable of the classify model: encoded images -> top-5 classes and probabilities."""
        stats = self.classify_stats
        out = []
        for req in requests:
            try:
                blobs = np.asarray(req["image"], dtype=object).reshape(-1)
                if blobs.size == 0:
                    raise RequestRefused("no image in the request")
                try:
                    images = np.stack(
                        [preprocess_image(_as_bytes(b), self.runner.data_config, self.max_image_pixels) for b in blobs]
                    )
                except UserError as e:
                    raise RequestRefused(str(e)) from None
                classes, scores = top_classes(self._logits(images, self.classify_name), TOP_K)
            except (RequestRefused, RequestFailed) as e:
                stats.record_error(isinstance(e, RequestRefused))
                if isinstance(e, RequestRefused):
                    LOG.info("%s: refused a request: %s", self.classify_name, e.message)
                raise
            stats.record(1, len(blobs))
            out.append({"classes": classes, "scores": scores})
        return out
