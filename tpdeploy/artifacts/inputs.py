"""What reading a model file reads, for the commands' one rule on outputs (`files.check_output`): the file, an
engine's sidecar, the external-data files of an ONNX model."""

from __future__ import annotations

import os

from tpdeploy.artifacts.engine_file import sidecar_path
from tpdeploy.artifacts.formats import ENGINE_SUFFIXES
from tpdeploy.artifacts.onnx_file import OnnxFile
from tpdeploy.errors import UserError


def model_inputs(path: str | None) -> list[str]:
    """`path` and the files it implies (a missing or unreadable file implies nothing: reading it is its own error)."""
    if not path:
        return []
    found = [path]
    if path.endswith(ENGINE_SUFFIXES):
        found.append(sidecar_path(path))
    elif path.endswith(".onnx") and os.path.isfile(path):
        try:
            folder = os.path.dirname(os.path.abspath(path))
            found += [
                os.path.join(folder, f) for f in OnnxFile.open(path, load_external_data=False).external_data_files()
            ]
        except UserError:
            pass
    return found
