"""A rich progress bar over this rank's parameters (rank 0 shows its own stage)."""

from contextlib import AbstractContextManager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class ConversionProgress(AbstractContextManager):
    def __init__(self, label: str, enabled: bool):
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[name]}"),
            )
            self._task = self._progress.add_task(label, total=None, name="")

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def start(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total, completed=0)

    def advance(self, name: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, name=name)

    def __exit__(self, *exc_info):
        if self._progress is not None:
            self._progress.stop()
        return False
