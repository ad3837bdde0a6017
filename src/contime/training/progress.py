"""What a training run shows: rich progress bars, or one plain line per epoch for logs (quiet mode).

The bar shows the model, the epoch, the batches done, the running training loss and samples per second. Reading
the loss forces a device sync, so it is read at most every ``refresh_seconds``. A summary line per epoch stays
above the bar (and is all that quiet mode prints). Only rank 0 shows anything.
"""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class TrainProgress:
    """Progress display of one ``Trainer.fit``; use as a context manager.

    Args:
        name: the model's name, shown first.
        epochs: total epochs.
        quiet: no bars, one line per epoch.
        enabled: False shows nothing at all (ranks other than 0).
        console: where to print; default a new ``rich.console.Console``.
    """

    def __init__(self, name: str, epochs: int, *, quiet: bool = False, enabled: bool = True,
                 console: Console | None = None, refresh_seconds: float = 0.25):
        self.name, self.epochs = name, epochs
        self.quiet, self.enabled = quiet, enabled
        self.console = console or Console()
        self.refresh_seconds = refresh_seconds
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_refresh = 0.0

    def __enter__(self) -> "TrainProgress":
        if self.enabled and not self.quiet:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, message: str) -> None:
        """Print a line (above the bar), without rich markup."""
        if self.enabled:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def start_epoch(self, epoch: int, batches: int, done: int = 0) -> None:
        """A bar for ``epoch`` (0-based) of ``batches`` batches, ``done`` of them already (after a resume)."""
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(f"{self.name} epoch {epoch + 1}/{self.epochs}", total=batches,
                                             completed=done, loss="-", speed="")
        self._last_refresh = 0.0

    def step(self, done: int, samples_per_second: float, loss: Callable[[], float]) -> None:
        """After a batch: ``done`` batches of the epoch; ``loss()`` gives the running mean (read sparingly)."""
        if self._progress is None or self._task is None:
            return
        now = time.perf_counter()
        fields = {}
        if now - self._last_refresh >= self.refresh_seconds:
            self._last_refresh = now
            fields = {"loss": f"{loss():.4g}", "speed": f"{samples_per_second:,.0f} samples/s"}
        self._progress.update(self._task, completed=done, **fields)

    def eval_callback(self, split: str) -> Callable[[int, int], None] | None:
        """A callback for ``evaluate`` that shows a bar for ``split`` while it runs (None in quiet mode)."""
        if self._progress is None:
            return None
        progress = self._progress
        task = progress.add_task(f"{self.name} {split}", total=None, loss="-", speed="")

        def callback(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)
            if done >= total:
                progress.remove_task(task)

        return callback

    def end_epoch(self, line: str) -> None:
        """The epoch's summary line."""
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        self.log(line)
