"""PyTorch backend: the Token-Pooled DeiT itself, or rebuilt from an exported ONNX file (same weights)."""
from __future__ import annotations

import numpy as np
import torch

from tpdeploy.backends.base import Runner
from tpdeploy.errors import TpdeployError
from tpdeploy.model import create_model
from tpdeploy.modelinfo import load_onnx


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model, device: str = "cpu", dtype: torch.dtype = torch.float32):
        if device == "cuda" and not torch.cuda.is_available():
            raise TpdeployError("PyTorch sees no CUDA GPU here (install a CUDA build of torch on a GPU machine)")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.torch_dtype = device, dtype
        self.input_dtype = np.dtype(np.float16 if dtype == torch.float16 else np.float32)
        self.image_size = model.cfg.img_size
        self.backend = f"torch-{device}"

    @classmethod
    def from_onnx(cls, path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "TorchRunner":
        """The PyTorch model an ONNX file was exported from, rebuilt from the recipe in its metadata."""
        meta = {p.key: p.value for p in load_onnx(path).metadata_props}
        if "tpdeploy.arch" not in meta:
            raise TpdeployError(f"{path} was not exported by tpdeploy (no tpdeploy metadata): cannot rebuild it in PyTorch")
        model = create_model(meta["tpdeploy.arch"], checkpoint=meta["tpdeploy.checkpoint"] or None,
                             method=meta["tpdeploy.method"], iterations=int(meta["tpdeploy.iterations"]),
                             schedule=[int(t) for t in meta["tpdeploy.tokens"].split(",")],
                             seed=int(meta["tpdeploy.seed"]))
        return cls(model, device, dtype)

    def _infer(self, images):
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device)
            return self.model(x).float().cpu().numpy()
