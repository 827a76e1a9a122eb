"""The epoch progress bar of both training loops (rich; transient, so it leaves no trace)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def epoch_progress(stderr: bool = False) -> Progress:
    """A started bar with the fields ``epoch`` and ``loss`` (set them in ``add_task``/``update``);
    on stdout by default (``molgiae train``), on stderr with ``stderr=True`` (``molgiae finetune``)."""
    progress = Progress(
        TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), transient=True,
        **({"console": Console(stderr=True)} if stderr else {}),
    )
    progress.start()
    return progress
