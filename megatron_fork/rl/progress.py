"""A rich progress bar over the RL steps, showing the latest reward and accuracy (rank 0)."""

from contextlib import AbstractContextManager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class StepProgress(AbstractContextManager):
    def __init__(self, total: int, completed: int, enabled: bool):
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]RL"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
            )
            self._task = self._progress.add_task("rl", total=total, completed=completed, status="")

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def advance(self, metrics: dict) -> None:
        if self._progress is None:
            return
        status = (
            f"acc {metrics.get('rollout/accuracy', float('nan')):.2f} "
            f"entropy {metrics.get('train/entropy_mean', float('nan')):.3f}"
        )
        if "eval/avg_at_k" in metrics:
            status += f" held-out {metrics['eval/avg_at_k']:.3f}"
        self._progress.update(self._task, advance=1, status=status)

    def __exit__(self, *exc_info):
        if self._progress is not None:
            self._progress.stop()
        return False
