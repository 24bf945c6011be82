"""``train.mixed_precision: pure-bf16``: weights, gradients and optimizer state all in bfloat16 (Zamirai et al. 2020).

Why: bf16 autocast keeps fp32 master weights, fp32 gradients and fp32 optimizer state (12 bytes per parameter with
SGD momentum, 16 with AdamW) and casts the weights to bf16 at every forward; pure bf16 keeps 2 bytes for each of
them and runs every op in bf16. A plain bf16 weight update loses every step smaller than the weight's rounding
step (2^-8 relative): late in a decaying schedule most of them. Zamirai et al. ("Revisiting BFloat16 Training")
show that 16-bit units alone match fp32 when the update is Kahan-compensated (or stochastically rounded): the
rounding error of each update is kept in a bf16 buffer and added back at the next one.

The optimizer is torch-optimi's (``optimi.SGD`` / ``optimi.AdamW`` with ``kahan_sum=True``), not written here; it is
an optional dependency (``pip install -e ".[pure-bf16]"`` in the clone), checked before a run starts.

How the model runs: the backbone's parameters and buffers are bf16; robustify's input normalization stays fp32 (so
the [0,1] pixel space the attacks live in is exact), the backbone's input is cast to its own dtype at its entry and
its logits back to fp32 (forward hooks on the backbone, which follow its dtype: a no-op once it is fp32 again), so
losses, accuracies and the attacks' input gradients are computed in fp32 on bf16 activations.

Evaluation is fp32 on an fp32 copy of the weights (:func:`fp32_copy`: bf16 -> fp32 is exact), as for every other
precision; the exported weights are that copy, so the run folder holds fp32 weights.

The option (:class:`PureBf16`) owns all of it: its refusals (``check``: LAMB/LARS and Nesterov momentum, which
torch-optimi lacks; a weight average, train.ema, whose 0.1% update vanishes in bf16; AWP, whose perturb-then-restore
is not exact in bf16; local SGD; gradient compression, the gradients already travel in bf16), its preflight
(torch-optimi installed, and every stage of a recipe in pure-bf16), the backbone's cast (``prepare_backbone``), the
Accelerator's precision (``own_precision``: no autocast, the weights themselves are bf16), the optimizer
(``build_optimizer``), the fp32 copy every verdict and the export measure (``evaluation_model``), and its precision
value with what the CLI's help, the step benchmark and the model card say of it (``precision``, declared to
robustify/sections.py: no other module names it).

Must not: change anything for the other precisions.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ...config import spelled
from ...errors import ConfigError, UserError
from .base import Option

PURE = "pure-bf16"
_HOOKED = "_robustify_dtype_hooks"


def is_pure(cfg: Any) -> bool:
    return cfg.train.mixed_precision == PURE


def require_optimi() -> Any:
    """torch-optimi, or one line saying how to install it."""
    try:
        import optimi
    except ImportError:
        raise UserError("train.mixed_precision='pure-bf16' needs torch-optimi (its Kahan-summed optimizers): "
                        "pip install -e \".[pure-bf16]\" in your robustify clone (or pip install torch-optimi); or "
                        "use 'bf16' (autocast, fp32 weights)") from None
    return optimi


def _cast_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    dtype = next(module.parameters()).dtype
    return (args[0].to(dtype), *args[1:])


def _float_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    return output.float() if isinstance(output, torch.Tensor) else output


def set_precision(backbone: nn.Module, pure: bool) -> nn.Module:
    """Cast ``backbone`` to bf16 (``pure``) or keep it fp32 (in place, returned), with the dtype hooks at its entry
    and exit installed once. Every stage of a recipe has the same precision (``train.preflight``), so a run casts
    once."""
    if pure and not getattr(backbone, _HOOKED, False):
        backbone.register_forward_pre_hook(_cast_input)
        backbone.register_forward_hook(_float_output)
        setattr(backbone, _HOOKED, True)
    target = torch.bfloat16 if pure else torch.float32
    if any(t.dtype != target for t in [*backbone.parameters(), *backbone.buffers()] if t.is_floating_point()):
        backbone.to(target)
    return backbone


def fp32_copy(model: nn.Module) -> nn.Module:
    """An fp32 copy of ``model`` (exact: every bf16 value is an fp32 value), for evaluation and export; the model
    itself is left as it is. A model that is already fp32 is returned as it is."""
    if all(t.dtype != torch.bfloat16 for t in [*model.parameters(), *model.buffers()]):
        return model
    clone = copy.deepcopy(model)
    for m in clone.modules():  # train.compile: the compiled forward belongs to the bf16 original; run the copy eagerly
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return clone.float()


def build_optimizer(groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
    """The Kahan-summed torch-optimi optimizer with the same hyperparameters as the fp32 one (``optim.build``):
    SGD with heavy-ball momentum and L2 weight decay as ``torch.optim.SGD``; AdamW with torch's defaults (betas
    (0.9, 0.999), eps 1e-8) and decoupled weight decay as ``torch.optim.AdamW``."""
    optimi = require_optimi()
    o = cfg.optim  # validated: SGD without Nesterov or AdamW (robustify.config refuses the others)
    if o.name == "adamw":
        return optimi.AdamW(groups, lr=cfg.schedule.lr, betas=(0.9, 0.999), eps=1e-8, kahan_sum=True)
    return optimi.SGD(groups, lr=cfg.schedule.lr, momentum=o.momentum, kahan_sum=True)


class PureBf16(Option):
    """``train.mixed_precision: pure-bf16``: bf16 weights, gradients and optimizer state, Kahan-summed updates."""

    name = "pure_bf16"
    keys = {"train.mixed_precision": PURE}
    title = "bf16 weights, gradients and optimizer state, Kahan-summed"
    precision = PURE  # declared: the config's choice check, the CLI, the record and the benchmarks list it
    precision_help = "bf16 weights and optimizer state, Kahan-summed"
    precision_note = "Kahan-summed"
    precision_card = ("bf16 weights, gradients and optimizer state with Kahan-summed updates, torch-optimi; exported "
                      "and evaluated in fp32")

    @classmethod
    def active(cls, cfg: Any) -> bool:
        return is_pure(cfg)

    @classmethod
    def check(cls, cfg: Any) -> None:
        """The combinations it refuses, each in one line naming both settings as a user writes them."""
        if not is_pure(cfg):
            return
        clash = {"optim.name": (cfg.optim.name, ("sgd", "adamw"), "torch-optimi's Kahan-summed optimizers are SGD "
                                                                  "and AdamW"),
                 "optim.nesterov": (cfg.optim.nesterov, (False,), "torch-optimi's SGD has heavy-ball momentum only"),
                 "train.ema": (cfg.train.ema, (False,), "a 0.1% average update vanishes in bf16 weights"),
                 "train.awp": (cfg.train.awp, (False,), "AWP's perturb-then-restore of the weights is not exact in "
                                                        "bf16"),
                 "train.local_sgd_steps": (cfg.train.local_sgd_steps, (None,), "not supported together yet"),
                 "train.grad_compression": (cfg.train.grad_compression, ("none",), "the gradients already travel "
                                                                                   "in bf16")}
        for key, (value, accepted, why) in clash.items():
            if value not in accepted:
                raise ConfigError(f"train.mixed_precision={spelled(PURE)} with {key}={spelled(value)} is not accepted "
                                  f"({why}); set {key}={spelled(accepted[0])}, or use train.mixed_precision=bf16 "
                                  "(autocast, fp32 weights)")

    @classmethod
    def preflight(cls, cfg: Any, stages: list[Any], architecture_of: Any) -> None:
        """torch-optimi installed (an optional dependency: said before anything starts), and every stage in pure-bf16
        or none: best weights kept in one precision would be restored, rounded, into the other."""
        if not any(is_pure(stage) for stage in stages):
            return
        require_optimi()
        names = [str(s.get("name", f"stage{i + 1}")) if isinstance(s, dict) else f"stage{i + 1}"
                 for i, s in enumerate(cfg.stages)] or [""]
        mixed = sorted({f"{name or 'the recipe'}: {stage.train.mixed_precision}"
                        for name, stage in zip(names, stages, strict=False) if not is_pure(stage)})
        if mixed:
            raise UserError(f"train.mixed_precision={spelled(PURE)} must be the precision of every stage; "
                            f"{', '.join(mixed)}; set it in the recipe's train section, not in one stage")

    @classmethod
    def prepare_backbone(cls, cfg: Any, backbone: Any, say: Any) -> None:
        set_precision(backbone, is_pure(cfg))  # bf16, or back to fp32 for a stage in another precision

    @classmethod
    def own_precision(cls, cfg: Any) -> str | None:
        return PURE if is_pure(cfg) else None

    @classmethod
    def build_optimizer(cls, groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer | None:
        return build_optimizer(groups, cfg) if is_pure(cfg) else None

    @classmethod
    def evaluation_model(cls, model: nn.Module) -> nn.Module:
        return fp32_copy(model)
