"""A rich progress bar over an evaluation's prompts, with the running avg@k (as the trainer's
``rl/progress.py`` shows the RL steps)."""

from contextlib import AbstractContextManager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class EvalProgress(AbstractContextManager):
    def __init__(self, total: int, completed: int, k: int, enabled: bool):
        self._progress = None
        self.k = k
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]eval"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("prompts"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
            )
            self._task = self._progress.add_task(
                "eval", total=total, completed=completed, status=""
            )

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def advance(self, prompts: int, correct: int, samples: int) -> None:
        """``prompts`` more done; ``correct`` of ``samples`` right so far (all prompts)."""
        if self._progress is None:
            return
        status = f"avg@{self.k} {correct / max(samples, 1):.3f}"
        self._progress.update(self._task, advance=prompts, status=status)

    def __exit__(self, *exc_info):
        if self._progress is not None:
            self._progress.stop()
        return False
