"""Where and how a recipe is submitted to Slurm: the cluster side of a launch, given on the
command line (the recipe itself says how many nodes and GPUs)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class SlurmOptions:
    account: str
    partition: str | None = None
    container_image: str = "megatron-fork.sqsh"
    """An enroot image (``.sqsh``) or a registry reference pyxis can pull."""
    mounts: tuple[str, ...] = ()
    """``host_path:container_path`` pairs (checkpoints, data, results)."""
    job_dir: str = "nemo_jobs"
    """Where NeMo-Run writes the sbatch script and logs (a shared file system)."""
    time: str | None = None
    """Time limit; None = the recipe's ``launch.time``."""
    retries: int = 3
    """Requeues after a failure (the run resumes from its latest checkpoint)."""
    env: tuple[str, ...] = ()
    """Extra ``KEY=VALUE`` environment variables for every task."""
    packager: str = "none"
    """"none": the code installed in the image; "git": NeMo-Run ships this git checkout."""

    def __post_init__(self):
        if not self.account:
            raise ValueError("--account is required for Slurm")
        if self.retries < 0:
            raise ValueError("--retries must be >= 0")
        if self.packager not in ("none", "git"):
            raise ValueError("--packager must be 'none' or 'git'")
        for item in self.env:
            if "=" not in item or item.startswith("="):
                raise ValueError(f"--env {item!r} must look like KEY=VALUE")
        for mount in self.mounts:
            if ":" not in mount:
                raise ValueError(f"--mount {mount!r} must look like host_path:container_path")
