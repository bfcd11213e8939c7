"""Runs inside Triton's Python-backend stub, beside PyTriton's proxy model (`model.py`), which it extends.

PyTriton answers every exception of an inference callable with one error for the whole execution: status INTERNAL
(HTTP 500) and the callable's Python traceback as the message. This keeps PyTriton's proxy and only changes what the
client gets: a `tpdeploy.serving.handlers.RequestError` carries its status and one-line message as a marked JSON
object (`STATUS_MARKER`, the same as handlers.py's): `RequestRefused` becomes INVALID_ARG (HTTP 400, gRPC
INVALID_ARGUMENT), `RequestFailed` INTERNAL, each with its message; anything else INTERNAL without details (the
server logged it). No traceback reaches a client.

tpdeploy's service copies this file into each PyTriton model folder and names it in config.pbtxt
(`default_model_filename`); it imports nothing of tpdeploy (the stub is another process).
"""

import json
import signal

import triton_python_backend_utils as pb_utils

from .model import TritonPythonModel as PyTritonModel

STATUS_MARKER = "tpdeploy-request-status:"
STATUSES = ("INVALID_ARG", "INTERNAL")  # TritonError's codes (the class exists once the stub serves, not at import)

# The stub leaves stopping to tritonserver; the helper processes PyTriton starts from it (its shared-memory tensor
# store) must too, or a Ctrl+C or a supervisor's SIGTERM to the whole process group kills them mid-request and
# tritonserver crashes. Ignored dispositions are inherited by those helpers (a handler would not be).
for _sig in (signal.SIGINT, signal.SIGTERM):
    try:
        signal.signal(_sig, signal.SIG_IGN)
    except ValueError:  # not the stub's main thread: nothing to do but keep its own handling
        pass


def request_status(error_text: str):
    """(status, message) of the last marked RequestError in PyTriton's error text, or None."""
    head, marker, payload = error_text.rpartition(STATUS_MARKER)
    if not marker:
        return None
    try:
        status = json.JSONDecoder().raw_decode(payload)[0]
        if status["status"] not in STATUSES:
            return None
        return getattr(pb_utils.TritonError, status["status"]), str(status["message"])
    except (ValueError, KeyError, TypeError):
        return None


class TritonPythonModel(PyTritonModel):
    def execute(self, requests):
        try:
            return super().execute(requests)
        except pb_utils.TritonModelException as e:
            status = request_status(str(e))
            if status is None:
                error = pb_utils.TritonError(
                    "internal error in the model (the server logged it)", pb_utils.TritonError.INTERNAL
                )
            else:
                error = pb_utils.TritonError(status[1], status[0])
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
