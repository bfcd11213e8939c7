"""The benchmarks' default models: exported once into a work folder (seeded-random weights unless a file is given)."""

import os
import sys


def export_if_missing(path: str, arch: str, **model_args) -> str:
    """`path` if it exists, else `arch` (with e.g. preset=... or method="none") exported there."""
    if os.path.exists(path):
        print(f"using {path}", file=sys.stderr)
        return path
    from tpdeploy.convert.export import export
    from tpdeploy.model.factory import create_model

    print(f"exporting {path}", file=sys.stderr)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    export(create_model(arch, **model_args), path)
    return path
