"""What a person reads: terminal tables (rich) and PNG plots (matplotlib) of a run or an evaluation.

Also how every robustify table meets a narrow terminal or a pipe (:class:`Listing`, :func:`output_console`): the
name column is never wrapped or cut, the least important columns are left out first, and a pipe gets a fixed width,
so ``robustify recipes | grep cifar10`` sees whole names. It must not compute results: it only lays them out.

Must not: compute results: it only renders what it is given.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Column, Table

# the width of a table written to a pipe or a file when COLUMNS is not set. rich's default there is 80, which folds
# the recipes table into fragments; robustify's tables never expand, so this only lifts the limit: each row is one
# line as wide as its cells, whole for grep and scripts (COLUMNS=N chooses a width instead)
PIPE_WIDTH = 1000


def output_console(stderr: bool = False, **kwargs) -> Console:
    """A rich Console for stdout (or stderr): the terminal's width on a terminal, else COLUMNS when set, else
    :data:`PIPE_WIDTH` (rich itself would use 80 in a pipe)."""
    console = Console(stderr=stderr, **kwargs)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        console = Console(stderr=stderr, width=PIPE_WIDTH, **kwargs)
    return console


class Listing(Table):
    """A rich Table that keeps its name column whole and leaves columns out rather than cutting words.

    ``name`` is the header of the column that identifies a row (never wrapped, never narrower than its longest
    cell); ``drop`` lists headers of columns that may be left out, least important first: while the table's minimum
    width (every word whole) exceeds the width it is given, the next one goes, and the caption says which went.
    If the table still does not fit, it is drawn at its minimum width (a terminal then wraps the long lines),
    because a cut name cannot be searched for or copied.
    """

    def __init__(self, *headers, name: str | None = None, drop: Sequence[str] = (), **kwargs) -> None:
        super().__init__(*headers, **kwargs)
        self.name_header = name
        self.drop = tuple(drop)

    def fitted(self, console: Console, width: int) -> tuple[Table, list[str]]:
        """A copy of the table for ``width`` columns, and the headers left out of it."""
        table = copy.copy(self)
        table.columns = [dataclasses.replace(c) for c in self.columns]
        if self.name_header is not None:
            column = _column(table, self.name_header)
            column.no_wrap = True
            wide = console.options.update_width(10**6)
            column.min_width = max(Measurement.get(console, wide, cell).maximum
                                   for cell in (column.header, *column._cells))
        left_out = []
        for header in self.drop:
            if _minimum(table, console) <= width:
                break
            table.columns.remove(_column(table, header))
            left_out.append(header.replace("\n", " "))
        for i, c in enumerate(table.columns):
            c._index = i
        _share_width(table, console, width)
        if left_out:
            note = f"left out to fit {width} columns: {', '.join(left_out)}"
            table.caption = f"{self.caption}\n{note}" if self.caption else note
        return table, left_out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table, _ = self.fitted(console, options.max_width)
        if self.name_header is not None:
            options = options.update_width(max(options.max_width, _minimum(table, console)))
        yield from Table.__rich_console__(table, console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        table, _ = self.fitted(console, options.max_width)
        return Table.__rich_measure__(table, console, options)


def _column(table: Table, header: str) -> Column:
    for c in table.columns:
        if c.header == header:
            return c
    raise KeyError(f"table {table.title!r} has no column {header!r}")  # a programming error, not a user's


def _share_width(table: Table, console: Console, width: int) -> None:
    """Fix the column widths when the table is too wide: each column gets its longest word, then the room left goes
    to the columns that need least to fit their longest line, so that as many columns as possible are one line and
    one column folds the most. (rich alone shrinks the widest columns first, below their longest word, which cuts
    words even where there is room for them.)"""
    wide = console.options.update_width(10**6)
    ranges = [table._measure_column(console, wide, c) for c in table.columns]
    room = width - table._extra_width
    if sum(r.maximum for r in ranges) <= room:
        return
    widths = [r.minimum for r in ranges]
    for i in sorted(range(len(ranges)), key=lambda i: ranges[i].maximum - ranges[i].minimum):
        widths[i] += max(0, min(ranges[i].maximum - widths[i], room - sum(widths)))
    for i, c in enumerate(table.columns):
        c.width = max(1, widths[i] - table._get_padding_width(i))


def _minimum(table: Table, console: Console) -> int:
    """The narrowest the table can be with every word whole."""
    return Table.__rich_measure__(table, console, console.options.update_width(10**6)).minimum


def print_tables(tables: Iterable[Table], console: Console | None = None) -> None:
    console = console or output_console()
    for table in tables:
        console.print(table, crop=False)  # a Listing wider than the terminal: whole lines, wrapped by the terminal


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def before_after_table(before: dict, after: dict, title: str = "robustify finetune") -> Table:
    pgd = after.get("pgd", {})
    attack = f"PGD-{pgd.get('steps', '?')}x{pgd.get('restarts', 1)} {pgd.get('norm', '')} eps={pgd.get('eps', 0):.4g}"
    table = Listing(title=title, name="model")
    table.add_column("model")
    table.add_column("clean", justify="right")
    table.add_column(attack, justify="right")
    aa = "autoattack_acc" in after or "autoattack_acc" in before
    if aa:
        table.add_column("AutoAttack", justify="right")
    unseen = [(u["norm"], u["eps"], u["threat"]) for u in after.get("unseen") or []]
    for _, _, threat in unseen:  # the other norms, marked unseen (eval.unseen)
        table.add_column(f"unseen {threat}", justify="right")
    for name, row in (("before", before), ("after", after)):
        cells = [name, pct(row.get("clean_acc")), pct(row.get("pgd_acc"))]
        if aa:
            cells.append(pct(row.get("autoattack_acc")))
        got = {(u["norm"], u["eps"]): u["acc"] for u in row.get("unseen") or []}
        cells += [pct(got.get((norm, eps))) for norm, eps, _ in unseen]
        table.add_row(*cells)
    return table


def history_table(history: list[dict]) -> Table:
    table = Listing(title="training history", name="epoch", drop=("seconds", "lr", "loss", "train acc"))
    for col in ("epoch", "lr", "loss", "train acc", "probe clean", "probe robust", "seconds", "note"):
        table.add_column(col, justify="right" if col != "note" else "left")
    for h in history:
        table.add_row(str(h["epoch"]), f"{h['lr']:.4g}", f"{h['loss']:.3f}", pct(h["train_acc"]),
                      pct(h["probe_clean_acc"]), pct(h["probe_robust_acc"]), f"{h['seconds']:.1f}", h.get("note", ""))
    return table


def print_table(table: Table) -> None:
    print_tables([table])


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
    table = Listing(title=title or f"robustify eval: {tm['norm']} eps={tm['eps']:.4g}, first {n} of "
                                   f"{sub['data']}/{sub['split']}", name="attack", drop=("settings", "robust / n"))
    for col, justify in (("attack", "left"), ("settings", "left"), ("accuracy", "right"), ("robust / n", "right")):
        table.add_column(col, justify=justify)

    def row(name: str, settings: str, acc: float, bold: bool = False) -> None:
        cells = [name, settings, pct(acc), f"{round(acc * n)}/{n}"]
        table.add_row(*(f"[bold]{c}[/bold]" for c in cells) if bold else cells)

    row("clean", "", report["clean_acc"])
    if "fgsm_acc" in report:
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
    for u in report.get("unseen") or []:  # other threat models, never part of the worst case above
        row(f"unseen: {u['threat']}", f"{u['label']}; {u['radii']} radii", u["acc"])
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
    table = Table(title="gradient-masking checks", caption=checks["verdict"], show_lines=True)  # sentences: rich wraps
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
