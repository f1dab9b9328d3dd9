"""The training and evaluation prompt sets of a run, from the built-in synthetic task or from
files (DAPO-Math-17K style for training, AIME style for evaluation). Bad rows of a file are
skipped and counted in its ``LoadReport``; an empty set raises, naming the file."""

from dataclasses import dataclass

from megatron_fork.data.loaders import load_aime, load_dapo
from megatron_fork.data.report import LoadReport
from megatron_fork.data.synthetic_task import SyntheticTaskConfig, build_splits
from megatron_fork.data.templated_task import TemplatedTaskConfig, build_templated_splits
from megatron_fork.data.types import PromptExample

SYNTHETIC = "synthetic"
FOLD = "fold"
"""``DataConfig.task``: the compare-and-fold task (``synthetic_task``), the embedded default."""
TEMPLATED = "templated"
"""``DataConfig.task``: the same folds in mostly determined text (``templated_task``)."""


@dataclass(frozen=True)
class DataConfig:
    """Where prompts come from: the built-in synthetic task, or files in DAPO/AIME layouts."""

    train: str = SYNTHETIC
    """"synthetic", or a DAPO-Math-17K style JSONL/JSON/parquet file."""
    eval: str = SYNTHETIC
    """"synthetic" (the task's held-out split), or an AIME-style file."""
    synthetic_terms: int = 4
    """Digits per prompt of the synthetic task."""
    synthetic_heldout: int = 500
    """Held-out prompts of the synthetic task."""
    synthetic_seed: int = 0
    """Seed of the synthetic task's train/held-out split."""
    task: str = FOLD
    """Which built-in task "synthetic" means: "fold" (the default) or "templated" (the paper's
    regime: a few decisions between determined text)."""
    templated_width: int = 1
    """Digits per number of the templated task (arithmetic modulo 10 ** width)."""
    templated_train: int = 9000
    """Train prompts of the templated task (its pool is sampled, not enumerated)."""

    def __post_init__(self):
        if self.task not in _BUILDERS:
            raise ValueError(
                f"DataConfig.task must be one of {sorted(_BUILDERS)}, got {self.task!r}"
            )

    def synthetic_task(self) -> SyntheticTaskConfig:
        return SyntheticTaskConfig(
            min_terms=self.synthetic_terms,
            max_terms=self.synthetic_terms,
            heldout_size=self.synthetic_heldout,
            seed=self.synthetic_seed,
        )

    def templated_task(self) -> TemplatedTaskConfig:
        return TemplatedTaskConfig(
            terms=self.synthetic_terms,
            width=self.templated_width,
            heldout_size=self.synthetic_heldout,
            train_size=self.templated_train,
            seed=self.synthetic_seed,
        )


# DataConfig.task -> the splits of that built-in task.
_BUILDERS = {
    FOLD: lambda config: build_splits(config.synthetic_task()),
    TEMPLATED: lambda config: build_templated_splits(config.templated_task()),
}


@dataclass(frozen=True)
class PromptSets:
    train: tuple[PromptExample, ...]
    eval: tuple[PromptExample, ...]
    reports: tuple[LoadReport, ...]
    """One per file read (none for the synthetic task)."""


def _from_file(loader, path: str, role: str, reports: list) -> tuple[PromptExample, ...]:
    examples, report = loader(path)
    reports.append(report)
    if not examples:
        raise ValueError(f"{role} set {path}: no usable rows ({report.summary()})")
    return tuple(examples)


def load_prompt_sets(config: DataConfig) -> PromptSets:
    reports: list[LoadReport] = []
    splits = None
    if SYNTHETIC in (config.train, config.eval):
        splits = _BUILDERS[config.task](config)
    train = (
        splits.train
        if config.train == SYNTHETIC
        else _from_file(load_dapo, config.train, "train", reports)
    )
    evaluation = (
        splits.heldout
        if config.eval == SYNTHETIC
        else _from_file(load_aime, config.eval, "eval", reports)
    )
    return PromptSets(train=train, eval=evaluation, reports=tuple(reports))
