"""tpdeploy: deploy Token-Pooled vision transformers (Marin et al., arXiv 2110.03860) on NVIDIA GPUs."""
from tpdeploy.errors import TpdeployError
from tpdeploy.model import create_model, list_archs
from tpdeploy.op import token_pool

__version__ = "0.1.0"
__all__ = ["TpdeployError", "create_model", "list_archs", "token_pool", "__version__"]
