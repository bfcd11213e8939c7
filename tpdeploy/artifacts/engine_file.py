"""A built TensorRT engine and its sidecar `<engine>.json`: one versioned schema, one reader and writer, the
compatibility check. A TensorRT engine only runs on the TensorRT version, GPU architecture and plugin it was
built with; the sidecar records them, the engine's own hash, the model's input/output contract and the
export recipe, so every stage (runtime, info, triton-repo) can trust and describe the engine without
opening it in TensorRT.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from tpdeploy.artifacts.files import sha256, write_text
from tpdeploy.artifacts.onnx_file import ModelSpec
from tpdeploy.artifacts.recipe import Recipe
from tpdeploy.errors import UserError, one_line

SCHEMA = "tpdeploy.engine/2"


def sidecar_path(engine_path: str) -> str:
    return engine_path + ".json"


@dataclass
class EngineSidecar:
    tensorrt_version: str
    gpu: str
    compute_capability: str  # "90" for sm_90
    engine_sha256: str
    onnx_sha256: str
    plugin_sha256: str | None  # None: built without the plugin (the function inlined)
    spec: ModelSpec
    recipe: Recipe | None
    build: dict = field(default_factory=dict)  # profile, precision, workspace, ... as given to build-engine
    tpdeploy_version: str = ""

    def to_json(self) -> str:
        d = {
            "schema": SCHEMA,
            "tpdeploy_version": self.tpdeploy_version,
            "tensorrt_version": self.tensorrt_version,
            "gpu": self.gpu,
            "compute_capability": self.compute_capability,
            "engine_sha256": self.engine_sha256,
            "onnx_sha256": self.onnx_sha256,
            "plugin_sha256": self.plugin_sha256,
            "spec": self.spec.to_dict(),
            "recipe": json.loads(self.recipe.to_json()) if self.recipe else None,
            "build": self.build,
        }
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> EngineSidecar:
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
        except (ValueError, TypeError) as e:
            raise UserError(f"{source} is not a tpdeploy engine sidecar: {one_line(e)}") from None
        if d.get("schema") != SCHEMA:
            raise UserError(
                f"{source} has schema {d.get('schema')!r}, this tpdeploy reads {SCHEMA!r}: rebuild the "
                f"engine with `tpdeploy build-engine`"
            )
        try:
            recipe = d["recipe"] and Recipe.from_json(json.dumps(d["recipe"]), source)
            sidecar = cls(
                str(d["tensorrt_version"]),
                str(d["gpu"]),
                str(d["compute_capability"]),
                str(d["engine_sha256"]),
                str(d["onnx_sha256"]),
                d["plugin_sha256"] and str(d["plugin_sha256"]),
                ModelSpec.from_dict(d["spec"], source),
                recipe or None,
                dict(d.get("build") or {}),
                str(d.get("tpdeploy_version", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{source} is not a valid tpdeploy engine sidecar (bad or missing {one_line(e)})") from None
        sidecar.spec.check_recipe(sidecar.recipe, source)
        nodes = sidecar.build.get("token_pool_nodes")
        if sidecar.recipe is not None and nodes is not None and nodes != len(sidecar.recipe.token_pool_clusters):
            raise UserError(
                f"{source} contradicts itself: its recipe ({sidecar.recipe.method}, tokens "
                f"{list(sidecar.recipe.tokens)}) means {len(sidecar.recipe.token_pool_clusters)} TokenPool nodes, its "
                f"build {nodes}"
            )
        return sidecar

    def describe(self) -> str:
        return (
            f"TensorRT {self.tensorrt_version} on {self.gpu} (sm_{self.compute_capability}), "
            f"{'with' if self.plugin_sha256 else 'without'} the TokenPool plugin"
        )


def write_sidecar(engine_path: str, sidecar: EngineSidecar, inputs=()) -> None:
    write_text(sidecar_path(engine_path), sidecar.to_json(), inputs)


def read_sidecar(engine_path: str, verify_engine: bool = True) -> EngineSidecar:
    """The sidecar of an engine file; refuses a missing one, and (verify_engine) an engine whose bytes are not
    the ones the sidecar describes (a corrupt copy, another file with the same name)."""
    if not os.path.isfile(engine_path):
        raise UserError(f"engine not found: {engine_path}")
    path = sidecar_path(engine_path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(
            f"{engine_path} has no sidecar {os.path.basename(path)}: tpdeploy reads engines built by "
            f"`tpdeploy build-engine`, which writes it beside the engine"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {one_line(e)}") from None
    sidecar = EngineSidecar.from_json(text, path)
    if verify_engine and sha256(engine_path) != sidecar.engine_sha256:
        raise UserError(
            f"{engine_path} is not the engine its sidecar describes (SHA-256 differs): a corrupt or "
            f"replaced file; rebuild it with `tpdeploy build-engine`"
        )
    return sidecar


def check_compatible(
    sidecar: EngineSidecar, trt_version: str, compute_capability: str, plugin_sha256: str | None
) -> None:
    """Refuse, with the reason, an engine that this TensorRT, GPU or plugin library cannot run."""
    built = f"engine was built with {sidecar.describe()}"
    rebuild = "; rebuild it here with `tpdeploy build-engine`"
    if sidecar.tensorrt_version != trt_version:
        raise UserError(f"{built}, this machine has TensorRT {trt_version}{rebuild}")
    if sidecar.compute_capability != compute_capability:
        raise UserError(f"{built}, this GPU is sm_{compute_capability}{rebuild}")
    if sidecar.plugin_sha256 and plugin_sha256 != sidecar.plugin_sha256:
        raise UserError(
            f"{built}, but the TokenPool plugin library found here is another build (SHA-256 differs): "
            f"pass the one it was built with (--plugin){rebuild}"
        )
