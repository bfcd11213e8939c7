"""PyTorch backend: the Token-Pooled ViT itself, or rebuilt from an exported file's recipe (an authoring tool:
`compare x.onnx` checks an export against the model it came from)."""

from __future__ import annotations

import numpy as np
import torch

from tpdeploy.artifacts.onnx_file import ModelSpec, OnnxFile, TensorSpec
from tpdeploy.errors import UserError
from tpdeploy.model.factory import model_from_recipe
from tpdeploy.runtime.base import Backend, Capabilities, Runner


class TorchRunner(Runner):
    backend = Backend.TORCH

    def __init__(self, model, device: str = "cpu", dtype: torch.dtype = torch.float32, recipe=None):
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("PyTorch sees no CUDA GPU here (install a CUDA build of torch on a GPU machine)")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device, self.torch_dtype = device, dtype
        self.capabilities = Capabilities(on_gpu=device == "cuda")
        dtype_name = "float16" if dtype == torch.float16 else "float32"
        size, classes = model.cfg.img_size, model.cfg.num_classes
        self.spec = ModelSpec(
            TensorSpec("images", dtype_name, (None, 3, size, size)), TensorSpec("logits", dtype_name, (None, classes))
        )
        self.recipe = recipe or model.recipe("fp16" if dtype == torch.float16 else "fp32")

    @classmethod
    def from_onnx(cls, path: str, device: str = "cpu", checkpoint: str | None = None) -> TorchRunner:
        """The PyTorch model an exported file came from, rebuilt from its recipe (in float32). A model exported
        from a checkpoint needs that checkpoint again (checked against the SHA-256 the recipe records)."""
        recipe = OnnxFile.open(path, load_external_data=False).require_recipe("rebuilding it in PyTorch")
        try:
            model = model_from_recipe(recipe, checkpoint)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        return cls(model, device, recipe=recipe)

    def _infer(self, images):
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            return self.model(x).float().cpu().numpy()
