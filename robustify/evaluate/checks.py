"""Sanity checks that flag gradient masking, each with a verdict a person can act on.

A defence that hides or scrambles its gradients looks robust to gradient-based attacks without being robust
(Athalye, Carlini & Wagner 2018). It gives itself away in ways that need no knowledge of the defence:

1. stronger attacks do not find more adversarial examples (AutoAttack <= PGD <= FGSM <= clean fails);
2. accuracy does not fall as eps grows, or stays well above zero at an eps that can erase any image;
3. running PGD longer raises accuracy;
4. a black-box attack (Square, which never looks at gradients) beats the white-box ones;
5. input gradients are exactly zero.

Each check returns ``pass``, ``warn`` (worth a look, not evidence of masking), ``fail`` or ``skipped`` (the attack it
needs was not run). The evaluation "passes" when nothing fails. Thresholds allow for sampling noise: a difference
smaller than ``max(2 / n, 0.5%)`` is never reported.

Must not: change a result: checks only flag gradient masking.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import attacks
from ..data import to_unit

LARGE_EPS_ACC = 0.05  # accuracy at the image-erasing eps must fall below this
SQUARE_FAIL = 0.02  # share of examples only the black-box attack breaks: above this, the white-box attacks are blind
SQUARE_WARN = 0.002  # AutoAttack's own flag threshold
RESTART_WARN = 0.03  # extra restarts/losses lowering accuracy by more than this: PGD is far from converged
AA_GAP_WARN = 0.05  # AutoAttack this far below PGD: PGD alone would have overstated robustness


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _item(name: str, title: str, status: str, verdict: str, **details: Any) -> dict[str, Any]:
    return {"name": name, "title": title, "status": status, "verdict": verdict, "details": details}


def tolerance(n: int) -> float:
    return max(2 / max(n, 1), 0.005)


@torch.no_grad()
def _zero(grad: torch.Tensor) -> torch.Tensor:
    return grad.flatten(1).abs().amax(1) == 0


def zero_gradient_counts(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                         device: torch.device) -> dict[str, torch.Tensor]:
    """How many of the examples ``x, y`` (uint8 images; one process's block) have an input gradient at the clean
    image that is exactly zero, for the CE and the margin loss; device counts, summed over processes by the caller."""
    counts = {name: torch.zeros((), dtype=torch.long, device=device) for name in attacks.LOSSES}
    for i in range(0, y.shape[0], batch_size):
        xb = to_unit(x[i:i + batch_size].to(device))
        yb = y[i:i + batch_size].to(device)
        for name, fn in attacks.LOSSES.items():
            grad, _ = attacks.input_gradient(model, xb, torch.zeros_like(xb), yb, fn)
            counts[name] += _zero(grad).sum()
    return counts


def check_attack_order(r: dict[str, Any], tol: float) -> dict[str, Any]:
    chain = [("clean", r["clean_acc"])]
    chain += [("FGSM", r["fgsm_acc"])] if "fgsm_acc" in r else []
    chain += [("PGD", r["pgd_acc"])] if "pgd_acc" in r else []
    chain += [("AutoAttack", r["autoattack_acc"])] if "autoattack_acc" in r else []
    text = " <= ".join(f"{n} {_pct(a)}" for n, a in reversed(chain))
    title = "stronger attacks find more adversarial examples"
    if len(chain) < 2:
        return _item("attack_order", title, "skipped", "Not run (needs an attack: --attack fgsm, pgd or autoattack).")
    for (weak, a_weak), (strong, a_strong) in zip(chain, chain[1:], strict=False):
        if a_strong > a_weak + tol:
            why = ("an iterative attack should never do worse than a single step. This is a classic sign of gradient "
                   "masking (or a broken attack setup); the PGD number overstates robustness."
                   if strong == "PGD" else
                   "AutoAttack should be at least as strong as PGD; a randomized model or an unstable evaluation "
                   "is likely." if strong == "AutoAttack" else "an attack cannot make the model more accurate.")
            return _item("attack_order", title, "fail",
                         f"{strong} leaves {_pct(a_strong)} accuracy but {weak} only {_pct(a_weak)}: {why}",
                         chain=dict(chain))
    if "pgd_acc" in r and "autoattack_acc" in r and r["pgd_acc"] - r["autoattack_acc"] > AA_GAP_WARN:
        return _item("attack_order", title, "warn",
                     f"Ordered as expected ({text}), but AutoAttack found {_pct(r['pgd_acc'] - r['autoattack_acc'])} "
                     "more adversarial examples than PGD: PGD alone would have overstated robustness; quote the "
                     "AutoAttack number.", chain=dict(chain))
    return _item("attack_order", title, "pass",
                 f"Each stronger attack found at least as many adversarial examples: {text}.", chain=dict(chain))


def check_eps_curve(r: dict[str, Any], tol: float) -> dict[str, Any]:
    title = "accuracy falls as eps grows"
    if "eps_curve" not in r:
        return _item("eps_curve", title, "skipped", "Not run (needs the accuracy-vs-eps curve: --attack curve).")
    pts = r["eps_curve"]["points"]
    for a, b in zip(pts, pts[1:], strict=False):
        if b["acc"] > a["acc"] + tol:
            return _item("eps_curve", title, "fail",
                         f"Accuracy rose from {_pct(a['acc'])} at eps={a['eps']:.4g} to {_pct(b['acc'])} at "
                         f"eps={b['eps']:.4g}. A bigger budget can never help the model (the larger ball contains the "
                         "smaller one), so the attack is missing adversarial examples that exist: gradient masking.",
                         points=pts)
    text = " -> ".join(f"{_pct(p['acc'])} (eps {p['eps']:.3g})" for p in pts)
    moving = [p for p in pts if p["eps"] > 0]
    if len(moving) >= 2 and moving[0]["acc"] > 0 and moving[-1]["acc"] >= moving[0]["acc"] - tol:
        return _item("eps_curve", title, "fail",
                     f"Accuracy does not fall as eps grows {moving[-1]['eps'] / moving[0]['eps']:.0f}-fold ({text}). "
                     "Robustness that does not depend on the budget is what masked gradients look like: the attack is "
                     "not finding adversarial examples, whatever their size.", points=pts)
    return _item("eps_curve", title, "pass", f"Accuracy falls as eps grows: {text}.", points=pts)


def check_large_eps(extra: dict[str, Any], eps: float) -> dict[str, Any]:
    title = "accuracy reaches ~0 at a huge eps"
    if "large_eps" not in extra:
        return _item("large_eps", title, "skipped", "Not run.")
    big, acc = extra["large_eps"]["eps"], extra["large_eps"]["acc"]
    details = {"eps": big, "acc": acc, "threshold": LARGE_EPS_ACC}
    if acc <= LARGE_EPS_ACC:
        where = (f"already at eps={big:.3g}, the largest on the curve," if extra["large_eps"].get("from_curve") else
                 f"at eps={big:.3g}, large enough to turn every image into the same flat grey picture,")
        return _item("large_eps", title, "pass",
                     f"PGD drives accuracy to {_pct(acc)} {where} as it must: the attack works when it has room to.",
                     **details)
    return _item("large_eps", title, "fail",
                 f"At eps={big:.3g}, large enough to erase any image, accuracy is still {_pct(acc)}. No classifier "
                 "can be robust there, so PGD is failing: its gradients are masked or obfuscated, and the robust "
                 f"accuracy at eps={eps:.4g} cannot be trusted.", **details)


def check_iterations(r: dict[str, Any], tol: float) -> dict[str, Any]:
    title = "more PGD steps and restarts do not raise accuracy"
    pgd = r.get("pgd")
    if not pgd or pgd["steps"] < 2:
        return _item("iterations", title, "skipped", "Not run (needs PGD with 2 or more steps).")
    by_step = pgd["last_iterate_acc_by_step"]
    k, half = len(by_step) - 1, (len(by_step) - 1) // 2
    details = {"last_iterate_acc_half": by_step[half], "last_iterate_acc_end": by_step[k],
               "first_run_acc": pgd["first_run_acc"], "final_acc": r["pgd_acc"]}
    if by_step[k] > by_step[half] + tol:
        return _item("iterations", title, "fail",
                     f"Running PGD longer raised accuracy (last iterate: {_pct(by_step[half])} after {half} steps, "
                     f"{_pct(by_step[k])} after {k}). A working attack only gets stronger with more steps; erratic "
                     "gradients (masking, randomness) or a too large step size are likely.", **details)
    drop = pgd["first_run_acc"] - r["pgd_acc"]
    runs = f"{pgd['restarts']} restart{'s' if pgd['restarts'] != 1 else ''} per loss, {pgd['loss']}"
    if drop > max(RESTART_WARN, 3 * tol):
        return _item("iterations", title, "warn",
                     f"More steps did not raise accuracy, but the extra runs ({runs}) lowered it by {_pct(drop)} "
                     "beyond the first: one PGD run is far from converged on this model. The report uses the stronger "
                     "number; the true robust accuracy may be lower still (try more restarts, or AutoAttack).",
                     **details)
    return _item("iterations", title, "pass",
                 f"More steps did not raise accuracy (last iterate {_pct(by_step[half])} after {half} steps, "
                 f"{_pct(by_step[k])} after {k}), and the extra runs ({runs}) lowered it by {_pct(max(drop, 0))}.",
                 **details)


def check_black_box(r: dict[str, Any], masks: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    title = "black-box Square does not beat the white-box attacks"
    aa = r.get("autoattack")
    if not aa or "square" not in aa.get("per_attack", {}):
        return _item("black_box", title, "skipped", "Not run (needs --attack autoattack, which includes Square).")
    only = extra["square_only"].clone()
    if "pgd" in masks:
        only &= masks["pgd"]  # survived PGD and AutoAttack's white-box attacks, broken by Square alone
    count, n = int(only.sum()), max(only.numel(), 1)
    rate = count / n
    details = {"square_only": count, "rate": rate, "n_examples": n}
    if rate > SQUARE_FAIL:
        return _item("black_box", title, "fail",
                     f"The black-box Square attack broke {count} examples ({_pct(rate)}) that every gradient-based "
                     "attack missed. An attack that never looks at gradients should not beat those that do: the "
                     "gradients are masked and the white-box numbers overstate robustness.", **details)
    if rate > SQUARE_WARN:
        return _item("black_box", title, "warn",
                     f"Square broke {count} example(s) ({_pct(rate)}) that the gradient-based attacks missed: a small "
                     "gap, but worth a look (AutoAttack flags anything above 0.2%).", **details)
    return _item("black_box", title, "pass",
                 f"The black-box Square attack broke {count} of the examples the white-box attacks left robust: the "
                 "gradients those attacks follow are informative.", **details)


def check_gradients(extra: dict[str, Any], losses: tuple[str, ...]) -> dict[str, Any]:
    title = "input gradients are not zero"
    if "zero_grad" not in extra:
        return _item("gradients", title, "skipped", "Not run.")
    z = extra["zero_grad"]
    worst = z.get("cw", min(z.values()))  # the margin loss has a gradient wherever the logits move at all
    details = {"zero_ce": z.get("ce"), "zero_cw": z.get("cw")}
    if worst > 0.01:
        return _item("gradients", title, "fail",
                     f"{_pct(worst)} of the examples have an input gradient of exactly zero, even for the margin "
                     "loss: gradient-based attacks are blind there (a non-differentiable step such as input "
                     "quantisation, or saturated outputs). PGD and APGD overstate robustness; use black-box or "
                     "BPDA-style attacks.", **details)
    if worst > 0:
        return _item("gradients", title, "warn",
                     f"{_pct(worst)} of the examples have an input gradient of exactly zero for the margin loss.",
                     **details)
    note = ""
    if z.get("ce"):
        note = (f" {_pct(z['ce'])} have a zero cross-entropy gradient (the softmax saturates in float32 on very "
                "confident predictions); " + ("the margin loss PGD also uses still has gradients there."
                                               if "cw" in losses else "add the margin loss: --pgd-loss ce+cw."))
    return _item("gradients", title, "pass", "Every example has a non-zero input gradient for the margin loss." + note,
                 **details)


def run_checks(r: dict[str, Any], masks: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    """All checks on an evaluation report; ``passed`` is False when any check fails."""
    tol = tolerance(r["n_examples"])
    losses = tuple(r.get("pgd", {}).get("loss", "ce").split("+"))
    items = [check_attack_order(r, tol), check_eps_curve(r, tol), check_large_eps(extra, r["threat_model"]["eps"]),
             check_iterations(r, tol), check_black_box(r, masks, extra), check_gradients(extra, losses)]
    failed = [i["name"] for i in items if i["status"] == "fail"]
    warned = [i["name"] for i in items if i["status"] == "warn"]
    if failed:
        verdict = (f"Possible gradient masking: {len(failed)} check(s) failed ({', '.join(failed)}). Treat the robust "
                   "accuracy as an upper bound that is probably too high.")
    elif warned:
        verdict = f"No sign of gradient masking; {len(warned)} check(s) worth a look ({', '.join(warned)})."
    else:
        verdict = "No sign of gradient masking: every check passed."
    return {"passed": not failed, "verdict": verdict, "tolerance": tol, "items": items}
