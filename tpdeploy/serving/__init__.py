"""`tpdeploy serve`: a model on NVIDIA Triton Inference Server (through PyTriton), split by job:

settings.py   ServeSettings: every knob of a served model, checked once
handlers.py   request handling (images -> logits, encoded images -> top-5), no PyTriton: any Runner will do
service.py    TritonService: those handlers on Triton (readiness, error statuses, clean start and stop)
lifecycle.py  serve(settings): what the command runs, until SIGINT or SIGTERM

from tpdeploy.serving.settings import ServeSettings
from tpdeploy.serving.service import TritonService
with TritonService(ServeSettings("tp.onnx", http_port=8000)) as service:
    ...                                        # serving in this process until the block ends
"""
