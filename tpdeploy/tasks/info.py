"""`tpdeploy info`, `presets` and `archs`: what a file, a model plan, the presets and the architectures are, from the
files and the registry alone (no PyTorch, no TensorRT)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from tpdeploy.artifacts import onnx_file
from tpdeploy.artifacts.engine_file import read_sidecar
from tpdeploy.artifacts.formats import ONNX, file_format
from tpdeploy.artifacts.onnx_file import OnnxFile
from tpdeploy.artifacts.recipe import Recipe
from tpdeploy.model import registry
from tpdeploy.model import schedule as sched


@dataclass
class FileInfo:
    """What an exported ONNX file or a built engine holds, field by field."""

    fields: dict

    def __getitem__(self, key: str):
        return self.fields[key]

    def format(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.fields.items())

    def to_json(self) -> dict:
        return self.fields


def _recipe_fields(recipe: Recipe | None) -> dict:
    if recipe is None:
        return {"recipe": "none (not exported by tpdeploy)"}
    d = dataclasses.asdict(recipe)
    d["tokens"] = list(recipe.tokens)
    d["data_config"] = recipe.data_config.describe()
    d["weights"] = recipe.weights
    quantization = recipe.quantization.describe() if recipe.quantization else "none (float weights and activations)"
    del d["quantization"]
    at = list(d).index("dtype") + 1  # dtype is the I/O dtype: what is inside follows it
    return dict([*list(d.items())[:at], ("quantization", quantization), *list(d.items())[at:]])


def describe_file(path: str) -> FileInfo:
    info = {"file": path}
    if file_format(path) == ONNX:
        model = OnnxFile.open(path, load_external_data=False)
        nodes = model.token_pool_nodes
        info.update(
            format="onnx",
            bytes=os.path.getsize(path),
            opset=onnx_file.opset(model.proto),
            ir_version=model.proto.ir_version,
            io=model.spec.describe(),
            **_recipe_fields(model.recipe),
            token_pool_nodes=len(nodes),
            num_clusters=[n.get("num_clusters") for n in nodes],
            local_functions=[f"{f.domain}::{f.name}" for f in model.proto.functions],
        )
        return FileInfo(info)
    sidecar = read_sidecar(path)
    info.update(
        format="tensorrt",
        bytes=os.path.getsize(path),
        tensorrt_version=sidecar.tensorrt_version,
        gpu=sidecar.gpu,
        compute_capability=sidecar.compute_capability,
        io=sidecar.spec.describe(),
        plugin="TokenPool plugin (sha256 " + sidecar.plugin_sha256[:16] + "...)"
        if sidecar.plugin_sha256
        else "none (TokenPool inlined)",
        build=sidecar.build,
        **_recipe_fields(sidecar.recipe),
    )
    return FileInfo(info)


@dataclass
class PresetList:
    presets: dict[str, sched.Preset]

    def format(self) -> str:
        found = self.presets
        name_width, arch_width = max(map(len, found)), max(len(p.arch) for p in found.values())
        return "\n".join(
            f"{name:<{name_width}}  {p.arch:<{arch_width}}  {p.method:<10} {len(p.tokens):>2} blocks, "
            f"{p.tokens[0]:>3} -> {p.tokens[-1]:<3} tokens  {p.description}"
            for name, p in found.items()
        )

    def to_json(self) -> list[dict]:
        return [{**dataclasses.asdict(p), "tokens": list(p.tokens)} for p in self.presets.values()]


def list_presets() -> PresetList:
    return PresetList(sched.presets())


@dataclass
class ArchList:
    """The registered architectures: the timm weights each data config is for, size, params, dense GMACs,
    preprocessing and the shipped presets."""

    rows: list[dict]

    def to_json(self) -> list[dict]:
        return self.rows

    def format(self) -> str:
        lines = [
            f"{'arch':<33} {'blocks':>6} {'dim':>5} {'tokens':>7} {'params M':>8} {'GMACs':>7}  {'input':<16} "
            f"{'mean / std':<37} {'timm weights':<22} presets (arch_...)"
        ]

        def numbers(v):
            return f"{v[0]:g}" if len(set(v)) == 1 else ",".join(f"{x:g}" for x in v)

        for r in self.rows:
            dc = r["data_config"]
            tokens = f"{r['prefix_tokens']}+{r['patch_tokens']}"
            size = f"{dc['input_size']} {dc['interpolation']} {dc['crop_pct']:g}"
            norm = f"{numbers(dc['mean'])} / {numbers(dc['std'])}"
            presets_here = ", ".join(p.removeprefix(r["arch"] + "_") for p in r["presets"]) or "-"
            lines.append(
                f"{r['arch']:<33} {r['blocks']:>6} {r['embed_dim']:>5} {tokens:>7} {r['params_m']:>8.2f} "
                f"{r['gmacs_dense']:>7.2f}  {size:<16} {norm:<37} {r['timm'].partition('.')[2]:<22} "
                f"{presets_here}"
            )
        lines.append(
            "tokens: prefix (CLS, distillation) + patch tokens; input: size, resize interpolation, crop_pct; "
            "the data config is that of timm's weights `<timm name>.<tag>` (`--json` has every field)"
        )
        return "\n".join(lines)


def list_archs() -> ArchList:
    presets = sched.presets()
    rows = []
    for name in registry.list_archs():
        cfg = registry.get_config(name)
        d = cfg.dims
        rows.append(
            {
                "arch": name,
                "timm": f"{cfg.timm_name}.{cfg.timm_tag}",
                "blocks": cfg.depth,
                "embed_dim": cfg.embed_dim,
                "prefix_tokens": cfg.num_prefix_tokens,
                "patch_tokens": d.num_patches,
                "params_m": registry.parameter_count(cfg) / 1e6,
                "gmacs_dense": sched.macs(sched.dense(d), d) / 1e9,
                "data_config": json.loads(json.dumps(dataclasses.asdict(cfg.data_config))),
                "presets": [p for p, preset in presets.items() if preset.arch == name],
            }
        )
    return ArchList(rows)
