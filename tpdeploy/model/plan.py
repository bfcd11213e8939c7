"""What model to build, resolved without PyTorch: the architecture, the pooling method and its schedule.

    plan = resolve_plan("deit_small", preset="deit_small_058")     # or flops_ratio=, schedule=, method=
    plan.macs, plan.flops_ratio, plan.tokens                       # what `tpdeploy info` shows
    plan.recipe(origin, "fp32")                                    # what an exported file records

Model creation follows timm's steps: resolve the plan (here), build the modules (`tpdeploy.model.vit`), load
the weights (`tpdeploy.model.checkpoint`, which returns their origin); `tpdeploy.model.factory.create_model`
does all three. An exported file's recipe is the plan plus the weights' origin, and `ModelPlan.from_recipe`
turns it back into a plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpdeploy import __version__
from tpdeploy.artifacts.recipe import Recipe, WeightsOrigin
from tpdeploy.errors import InvalidArgumentError, UserError, check_int, check_number
from tpdeploy.model import schedule as sched
from tpdeploy.model.registry import ViTConfig, get_config, parameter_count
from tpdeploy.tokenpool.definition import INT32_MAX

DEFAULT_ARCH = "deit_small"


@dataclass(frozen=True)
class ModelPlan:
    """A Token-Pooled ViT to build: `tokens` is the number of patch tokens entering each block."""

    cfg: ViTConfig
    tokens: tuple[int, ...]
    method: str = sched.DEFAULT_METHOD
    iterations: int = sched.DEFAULT_ITERATIONS

    def __post_init__(self):
        sched.check_method(self.method)
        check_int("iterations", self.iterations, minimum=0, maximum=INT32_MAX)
        object.__setattr__(self, "tokens", sched.validate(self.tokens, self.cfg.dims, self.method))

    @property
    def macs(self) -> int:
        return sched.macs(self.tokens, self.cfg.dims, self.method, self.iterations)

    @property
    def dense_macs(self) -> int:
        return sched.macs(sched.dense(self.cfg.dims), self.cfg.dims)

    @property
    def flops_ratio(self) -> float:
        return self.macs / self.dense_macs

    @property
    def pooling_steps(self) -> list[tuple[int, int, int]]:
        """(block index, tokens in, tokens out) of each step, after the block whose index it has."""
        nxt = self.tokens[1:] + self.tokens[-1:]
        return [(i, n, k) for i, (n, k) in enumerate(zip(self.tokens, nxt)) if k < n]

    def describe(self) -> str:
        """One line: architecture, method, iterations, FLOPs ratio and tokens (as messages name a plan)."""
        pooled = (
            f"{self.method} (T={self.iterations}) at {self.flops_ratio:.2f}x FLOPs" if self.pooling_steps else "dense"
        )
        return f"{self.cfg.name} {pooled}, tokens {','.join(map(str, self.tokens))}"

    def recipe(self, origin: WeightsOrigin, dtype: str = "fp32") -> Recipe:
        """What an exported file of this plan, with these weights, records: enough to rebuild it, no local path."""
        return Recipe(
            arch=self.cfg.name,
            method=self.method,
            iterations=self.iterations,
            tokens=self.tokens,
            dtype=dtype,
            num_classes=self.cfg.num_classes,
            data_config=self.cfg.data_config,
            seed=origin.seed,
            checkpoint_sha256=origin.checkpoint_sha256,
            tpdeploy_version=__version__,
            finetuned_from=origin.finetuned_from,
        )

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> ModelPlan:
        return cls(get_config(recipe.arch), recipe.tokens, recipe.method, recipe.iterations)


def parse_schedule(text: str) -> list[int]:
    """A schedule given on the command line: comma-separated token counts."""
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UserError(f"--schedule must be comma-separated integers, got {text!r}") from None


def resolve_plan(
    arch: str | None = None,
    flops_ratio: float | None = None,
    preset: str | None = None,
    schedule=None,
    method: str | None = None,
    iterations: int | None = None,
) -> ModelPlan:
    """The plan for at most one of flops_ratio, preset and schedule; none means dense tokens (all patch tokens in
    every block). A preset brings its architecture (the default arch), method and iterations unless these are
    given. Without arch or preset: DEFAULT_ARCH."""
    if sum(x is not None for x in (flops_ratio, preset, schedule)) > 1:
        raise InvalidArgumentError("give at most one of flops_ratio, preset and schedule")
    if iterations is not None:
        iterations = check_int("iterations", iterations, minimum=0, maximum=INT32_MAX)
    if flops_ratio is not None:
        flops_ratio = check_number("flops_ratio", flops_ratio, minimum=0.0, exclusive=True)
    if preset is not None:
        p = sched.load_preset(preset)
        arch = arch or p.arch
        if arch != p.arch and get_config(arch).name != p.arch:
            raise UserError(f"preset {p.name} is for {p.arch}, not {arch}")
        method = method or p.method
        iterations = p.iterations if iterations is None else iterations
    method = method or sched.DEFAULT_METHOD
    sched.check_method(method)
    iterations = sched.DEFAULT_ITERATIONS if iterations is None else iterations
    cfg = get_config(arch or DEFAULT_ARCH)
    if preset is not None:  # its schedule as it is: grid refuses one that is not square, as for --schedule
        try:
            return ModelPlan(cfg, p.tokens, method, iterations)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"preset {p.name} with method {method!r}: {e}") from None
    elif schedule is not None:
        tokens = schedule
    elif flops_ratio is not None:
        tokens = sched.solve(flops_ratio, cfg.dims, method, iterations)
    else:
        tokens = sched.dense(cfg.dims)
    return ModelPlan(cfg, tokens, method, iterations)


@dataclass
class PlanSummary:
    """A model plan: tokens per block, GMACs pooled and dense, parameters, preprocessing, where the weights are from."""

    plan: ModelPlan
    origin: WeightsOrigin

    def to_json(self) -> dict:
        p = self.plan
        return {
            "arch": p.cfg.name,
            "method": p.method,
            "iterations": p.iterations,
            "tokens": list(p.tokens),
            "gmacs": p.macs / 1e9,
            "gmacs_dense": p.dense_macs / 1e9,
            "flops_ratio": p.flops_ratio,
            "params_m": parameter_count(p.cfg) / 1e6,
            "pooling_steps": len(p.pooling_steps),
            "weights": self.origin.describe(),
            "data_config": p.cfg.data_config.describe(),
        }

    def format(self) -> str:
        s = self.to_json()
        lines = [
            f"{s['arch']}  method {s['method']}  iterations {s['iterations']}  weights {s['weights']}",
            f"{'block':>5} {'tokens':>7}",
        ]
        prev = None
        for i, t in enumerate(s["tokens"], start=1):
            mark = "  <- pooled" if prev is not None and t < prev else ""
            lines.append(f"{i:>5} {t:>7}{mark}")
            prev = t
        lines.append(
            f"GMACs {s['gmacs']:.3f} pooled vs {s['gmacs_dense']:.3f} dense ({s['flops_ratio']:.3f}x), "
            f"{s['pooling_steps']} pooling steps, {s['params_m']:.2f} M params"
        )
        lines.append(f"preprocessing: {s['data_config']}")
        return "\n".join(lines)
