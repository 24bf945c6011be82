"""What a person reads: terminal tables (rich) and PNG plots (matplotlib) of a run or an evaluation."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def before_after_table(before: dict, after: dict, title: str = "robustify finetune") -> Table:
    pgd = after.get("pgd", {})
    attack = f"PGD-{pgd.get('steps', '?')}x{pgd.get('restarts', 1)} {pgd.get('norm', '')} eps={pgd.get('eps', 0):.4g}"
    table = Table(title=title)
    table.add_column("model")
    table.add_column("clean", justify="right")
    table.add_column(attack, justify="right")
    if "autoattack_acc" in after or "autoattack_acc" in before:
        table.add_column("AutoAttack", justify="right")
    for name, row in (("before", before), ("after", after)):
        cells = [name, pct(row.get("clean_acc")), pct(row.get("pgd_acc"))]
        if len(table.columns) == 4:
            cells.append(pct(row.get("autoattack_acc")))
        table.add_row(*cells)
    return table


def history_table(history: list[dict]) -> Table:
    table = Table(title="training history")
    for col in ("epoch", "lr", "loss", "train acc", "probe clean", "probe robust", "seconds", "note"):
        table.add_column(col, justify="right" if col != "note" else "left")
    for h in history:
        table.add_row(str(h["epoch"]), f"{h['lr']:.4g}", f"{h['loss']:.3f}", pct(h["train_acc"]),
                      pct(h["probe_clean_acc"]), pct(h["probe_robust_acc"]), f"{h['seconds']:.1f}", h.get("note", ""))
    return table


def print_table(table: Table) -> None:
    Console().print(table)


def save_figure(fig, path: str | Path) -> None:
    """Render a matplotlib figure to PNG and write it crash-safely (temporary file, then rename)."""
    import io

    import matplotlib.pyplot as plt

    from .fileio import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_history(history: list[dict], path: str | Path) -> None:
    """Loss, train accuracy and probe accuracies per epoch, and the learning rate, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["probe_clean_acc"] for h in history], "o-", label="probe clean")
    ax1.plot(epochs, [h["probe_robust_acc"] for h in history], "o-", label="probe PGD")
    ax1.plot(epochs, [h["train_acc"] for h in history], "s--", label="train (on trained inputs)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("accuracy")
    ax1.set_ylim(0, 1)
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [h["loss"] for h in history], "o-", color="tab:red", label="loss")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("loss")
    lr = ax2.twinx()
    lr.plot(epochs, [h["lr"] for h in history], "--", color="tab:gray", label="lr (epoch end)")
    lr.set_ylabel("learning rate")
    ax2.grid(alpha=0.3)
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------ robustify eval
AA_NAMES = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square (black-box)"}
STATUS_STYLE = {"pass": "[green]pass[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[bold red]FAIL[/bold red]",
                "skipped": "[dim]skipped[/dim]"}


def eval_table(report: dict, title: str | None = None) -> Table:
    """One row per attack: its settings, the robust accuracy and robust/total, AutoAttack per attack as RobustBench
    prints it (cumulative: each attack runs on what the previous ones left)."""
    n = report["n_examples"]
    tm = report["threat_model"]
    sub = report["subset"]
    table = Table(title=title or f"robustify eval: {tm['norm']} eps={tm['eps']:.4g}, first {n} of "
                                 f"{sub['data']}/{sub['split']}")
    for col, justify in (("attack", "left"), ("settings", "left"), ("accuracy", "right"), ("robust / n", "right")):
        table.add_column(col, justify=justify)

    def row(name: str, settings: str, acc: float, bold: bool = False) -> None:
        cells = [name, settings, pct(acc), f"{round(acc * n)}/{n}"]
        table.add_row(*(f"[bold]{c}[/bold]" for c in cells) if bold else cells)

    row("clean", "", report["clean_acc"])
    row("FGSM", "one step of eps, no random start", report["fgsm_acc"])
    if "pgd_acc" in report:
        p = report["pgd"]
        restarts = f"{p['restarts']} restart" + ("s" if p["restarts"] != 1 else "")
        row("PGD", f"{p['steps']} steps x {restarts} per loss, loss {p['loss']}, step {p['alpha']:.3g}",
            report["pgd_acc"], bold="autoattack_acc" not in report)
    if "autoattack_acc" in report:
        aa = report["autoattack"]
        for name in aa["attacks"]:
            row(f"  after {AA_NAMES.get(name, name)}", "AutoAttack, cumulative", aa["per_attack"][name])
        version = aa["version"]
        label = "AutoAttack" + ("" if version == "standard" else f" ({version}: not comparable to RobustBench)")
        row(label, f"{aa['package']}, version {aa['version']}", report["autoattack_acc"], bold=True)
    if any(k in report for k in ("pgd_acc", "autoattack_acc")):
        row("robust to all of the above", "worst case per example", report["robust_acc"])
    return table


def eps_curve_table(report: dict) -> Table:
    curve = report["eps_curve"]
    a = curve["attack"]
    table = Table(title=f"accuracy vs eps (PGD-{a['steps']} {a['loss']}, {a['restarts']} restart)")
    for p in curve["points"]:
        table.add_column(f"eps {p['eps']:.4g}", justify="right")
    table.add_row(*(pct(p["acc"]) for p in curve["points"]))
    return table


def checks_table(report: dict) -> Table:
    checks = report["checks"]
    table = Table(title="gradient-masking checks", caption=checks["verdict"], show_lines=True)
    table.add_column("check")
    table.add_column("result", justify="center")
    table.add_column("verdict", ratio=1)
    for item in checks["items"]:
        table.add_row(item["title"], STATUS_STYLE.get(item["status"], item["status"]), item["verdict"])
    return table


def plot_eps_curve(report: dict, path: str | Path) -> None:
    """Robust accuracy against eps (PGD), with the evaluated eps marked and PGD / AutoAttack there, as one PNG."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    curve = report["eps_curve"]
    tm = report["threat_model"]
    pts = curve["points"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    a = curve["attack"]
    ax.plot([p["eps"] for p in pts], [p["acc"] for p in pts], "o-", label=f"PGD-{a['steps']} ({a['loss']}), per eps")
    ax.axvline(tm["eps"], color="tab:gray", ls=":", lw=1)
    if "pgd_acc" in report:
        p = report["pgd"]
        ax.plot([tm["eps"]], [report["pgd_acc"]], "s", color="tab:orange",
                label=f"PGD-{p['steps']} x{p['restarts']} ({p['loss']})")
    if "autoattack_acc" in report:
        ax.plot([tm["eps"]], [report["autoattack_acc"]], "D", color="tab:red",
                label=f"AutoAttack ({report['autoattack']['version']})")
    ax.set_xlabel(f"eps ({tm['norm']}, [0,1] pixel units)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"robust accuracy vs eps, first {report['n_examples']} of {report['subset']['data']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
