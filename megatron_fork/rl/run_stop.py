"""A run that stops for a reason a restart cannot fix leaves ``output_dir/STOPPED``, and a later
attempt on that folder refuses to start until a person deals with it.

Why: a Slurm job that fails is requeued by NeMo-Run (``TORCHX_MAX_RETRIES``) and resumes from
its last checkpoint; rollouts are a fixed function of (step, round), so a step whose dynamic
sampling ran out (``DynamicSamplingExhausted``, the paper's behaviour) would regenerate the same
rounds on every retry, hours of engine time each, to reach the same error. The marker names the
error and the way out (change the setting it names, delete the file).
"""

from pathlib import Path

from megatron_fork.atomic_files import write_text_atomically

STOP_FILE = "STOPPED"


class RunStoppedError(RuntimeError):
    """An earlier attempt on this output directory stopped for good."""


def record_stop(output_dir: str | Path, error: Exception) -> Path:
    """Rank 0: write the marker naming ``error``; returns its path."""
    path = Path(output_dir) / STOP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, f"{type(error).__name__}: {error}\n")
    return path


def refuse_if_stopped(output_dir: str | Path) -> None:
    """Raise ``RunStoppedError`` if an earlier attempt left the marker."""
    path = Path(output_dir) / STOP_FILE
    if path.is_file():
        reason = path.read_text().strip()
        raise RunStoppedError(
            f"{path}: an earlier attempt of this run stopped ({reason}); a retry would repeat "
            f"it. Change the setting it names, then delete {path} to resume"
        )
