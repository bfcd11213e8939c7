"""Runs inside Triton's Python-backend stub, beside PyTriton's proxy model (`model.py`), which it extends.

PyTriton answers every exception of an inference callable with one error for the whole execution: status INTERNAL
(HTTP 500) and the callable's Python traceback as the message. This keeps PyTriton's proxy and only changes what the
client gets: `tpdeploy.serving.handlers.RequestRefused` -> INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT) with its
one-line message, `RequestFailed` -> INTERNAL with its one-line message, anything else -> INTERNAL without details
(the server logged it). No traceback reaches a client.

tpdeploy's service copies this file into each PyTriton model folder and names it in config.pbtxt
(`default_model_filename`); it imports nothing of tpdeploy (the stub is another process).
"""
import re
import signal

import triton_python_backend_utils as pb_utils

from .model import TritonPythonModel as PyTritonModel

# The stub leaves stopping to tritonserver; the helper processes PyTriton starts from it (its shared-memory tensor
# store) must too, or a Ctrl+C or a supervisor's SIGTERM to the whole process group kills them mid-request and
# tritonserver crashes. Ignored dispositions are inherited by those helpers (a handler would not be).
for _sig in (signal.SIGINT, signal.SIGTERM):
    try:
        signal.signal(_sig, signal.SIG_IGN)
    except ValueError:  # not the stub's main thread: nothing to do but keep its own handling
        pass

# the last line of the formatted exception PyTriton sends: "<module>.RequestRefused: <message>"
_STATUS = re.compile(r"^[\w.]*\b(RequestRefused|RequestFailed): (.+)$", re.MULTILINE)


class TritonPythonModel(PyTritonModel):
    def execute(self, requests):
        try:
            return super().execute(requests)
        except pb_utils.TritonModelException as e:
            found = _STATUS.findall(str(e))
            if found and found[-1][0] == "RequestRefused":
                error = pb_utils.TritonError(found[-1][1], pb_utils.TritonError.INVALID_ARG)
            elif found:
                error = pb_utils.TritonError(found[-1][1], pb_utils.TritonError.INTERNAL)
            else:
                error = pb_utils.TritonError("internal error in the model (the server logged it)",
                                             pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
