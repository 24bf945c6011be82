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


def plot_history(history: list[dict], path: str | Path) -> None:
    """Loss, train accuracy and probe accuracies per epoch, and the learning rate, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileio import atomic_write_bytes

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
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
