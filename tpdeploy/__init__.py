"""tpdeploy: deploy Token-Pooled vision transformers (Marin et al., arXiv 2110.03860) on NVIDIA GPUs.

`create_model` and `token_pool` need PyTorch and are imported on first use, so that serving code
(`tpdeploy.runtime`) runs on machines without it.
"""

from tpdeploy.errors import TpdeployError

__version__ = "0.2.0"
__all__ = ["TpdeployError", "create_model", "list_archs", "token_pool", "__version__"]
_LAZY = {
    "create_model": "tpdeploy.model.factory",
    "list_archs": "tpdeploy.model.registry",
    "token_pool": "tpdeploy.tokenpool.reference",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tpdeploy' has no attribute {name!r}")
