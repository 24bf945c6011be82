"""The layout of a run folder that more than one wing reads: where checkpoints live and what marks one complete.

Owned here (below the wings) so the run lock, the trainer and the evaluation agree on it; it reads names only and
never opens a checkpoint (loading one is the train wing's job).

Must not: open or load a checkpoint (the train wing's job).
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of an interrupted save are not listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("ckpt_") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))
