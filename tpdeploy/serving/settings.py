"""ServeSettings: what `tpdeploy serve` serves and how, checked once when it is made."""

from __future__ import annotations

from dataclasses import dataclass

from tpdeploy.errors import UserError
from tpdeploy.serving.handlers import DEFAULT_MAX_IMAGE_PIXELS
from tpdeploy.serving.triton_config import (
    DEFAULT_INSTANCES,
    DEFAULT_MAX_BATCH,
    DEFAULT_QUEUE_DELAY_US,
    check_batching,
    model_name,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT = 8000, 8001, 8002  # Triton's own defaults
# Triton's drain budget when stopping: keep-alive HTTP clients hold it open to the end, and the whole stop must fit
# in the 10 s a supervisor commonly waits before SIGKILL
DEFAULT_EXIT_TIMEOUT_S = 5


@dataclass(frozen=True)
class ServeSettings:
    model_path: str
    backend: str | None = None  # ort / trt / torch; default: by file type
    device: str = "cpu"
    plugin: str | None = None  # TokenPool plugin library for engines
    threads: int | None = None  # intra-op threads (CPU backends)
    checkpoint: str | None = None  # torch backend: the checkpoint the ONNX file was exported from
    name: str | None = None  # Triton model name; default: the file's stem
    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int | None = DEFAULT_METRICS_PORT  # None: no metrics endpoint
    max_batch: int = DEFAULT_MAX_BATCH
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = DEFAULT_INSTANCES
    exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    verbose: bool = False  # show Triton's own log

    def __post_init__(self):
        check_batching(self.max_batch, self.instances, self.max_queue_delay_us)
        object.__setattr__(self, "name", model_name(self.model_path, self.name))
        for what, port in self.ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise UserError(f"the {what} port must be in [1, 65535], got {port!r}")
        if len({port for _, port in self.ports}) != len(self.ports):
            raise UserError(f"the HTTP, gRPC and metrics ports must differ, got {[port for _, port in self.ports]}")
        if self.exit_timeout_s < 1:
            raise UserError(f"exit timeout must be at least 1 s, got {self.exit_timeout_s}")
        if self.max_image_pixels < 1:
            raise UserError(f"max image pixels must be at least 1, got {self.max_image_pixels}")

    @property
    def ports(self) -> list[tuple[str, int]]:
        ports = [("HTTP", self.http_port), ("gRPC", self.grpc_port)]
        return ports + ([("metrics", self.metrics_port)] if self.metrics_port else [])

    @property
    def classify_name(self) -> str:
        return f"{self.name}_classify"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self.host}:{self.metrics_port}/metrics" if self.metrics_port else None
