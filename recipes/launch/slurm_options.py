"""Where and how a recipe is submitted to Slurm: the cluster side of a launch, given on the
command line (the recipe itself says how many nodes and GPUs). Checked here, before NeMo-Run is
imported, so a bad value exits with status 2 and one line."""

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from recipes.launch.container_image import check_container_image

ENV_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")
SECRET_KEYS = ("SGLANG_API_KEY", "VLLM_API_KEY")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+@=-]*")
"""NeMo-Run writes log paths under the job directory into the srun lines unquoted
(``noquote(job_details.srun_stdout)``), so the job directory keeps to these characters."""
MEMORY = re.compile(r"\d+[KMGT]?")
GRES = re.compile(r"gpu(?::[A-Za-z0-9_.-]+)?:(\d+)")


@dataclass(frozen=True)
class SlurmOptions:
    account: str
    container_image: str = ""
    """An absolute path to a squashfs file or a pinned registry reference (required)."""
    partition: str | None = None
    mounts: tuple[str, ...] = ()
    """``host_path:container_path[:flags]`` (checkpoints, data, results)."""
    job_dir: str = "nemo_jobs"
    """Where NeMo-Run writes the sbatch script and logs (a shared file system)."""
    time: str | None = None
    """Time limit; None = the recipe's ``launch.time``."""
    retries: int = 3
    """Requeues after a failure (the run resumes from its latest checkpoint)."""
    env: tuple[str, ...] = ()
    """Extra ``KEY=VALUE`` environment variables for every task (upper-case keys)."""
    network_env: tuple[str, ...] = ()
    """NCCL/Gloo network settings taken from the submitting shell (``KEY=VALUE``)."""
    packager: str = "none"
    """"none": the code installed in the image; "git": NeMo-Run ships this git checkout."""
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None
    mem: str = "0"
    """Memory per node; "0" = all of it (``--exclusive`` alone gets the site's default)."""
    gres: str | None = None
    """``gpu[:type]:N`` to request GPUs as a GRES; None = ``--gpus-per-node``."""
    job_name: str | None = None
    """None = the recipe's name."""
    api_key_file: str | None = None
    """A file (read in the job) holding the engines' API key; None = a new key per job."""
    cache_dir: str | None = None
    """Triton/Inductor/flashinfer/HF caches; None = ``/tmp/rlvr-$SLURM_JOB_ID`` per node."""
    rendezvous_timeout_s: int = 1800
    """How long torchrun waits for every trainer node (each unpacks the image first)."""

    def __post_init__(self):
        if not self.account:
            raise ValueError("--account is required for Slurm")
        check_container_image(self.container_image)
        if self.retries < 0 or self.rendezvous_timeout_s < 60:
            raise ValueError("--retries must be >= 0 and --rendezvous-timeout >= 60")
        if self.packager not in ("none", "git"):
            raise ValueError("--packager must be 'none' or 'git'")
        _check_env(self.env)
        _check_paths(self)
        _check_names(self)


def _check_env(items: tuple[str, ...]) -> None:
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r} must look like KEY=VALUE")
        if key in SECRET_KEYS:
            raise ValueError(
                f"--env {key}=... would be written into the sbatch script and its log: the job "
                f"makes a {key} of its own for its engines; to choose it, put it in a file only "
                "you can read and pass --api-key-file PATH"
            )
        if not ENV_KEY.fullmatch(key):
            raise ValueError(
                f"--env {key}=...: keys are upper-case letters, digits and '_' (NeMo-Run "
                f"exports every key upper-cased: write {key.upper()} if that is what you mean)"
            )


def _check_paths(options: SlurmOptions) -> None:
    if not PLAIN_PATH.fullmatch(options.job_dir):
        raise ValueError(
            f"--job-dir {options.job_dir!r}: an absolute path of letters, digits and ._/+@=- "
            "(NeMo-Run writes the log paths under it into the script unquoted)"
        )
    for mount in options.mounts:
        parts = mount.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]) or "," in mount:
            raise ValueError(
                f"--mount {mount!r} must look like host_path:container_path[:flags] (no commas)"
            )
    files = (("--api-key-file", options.api_key_file), ("--cache-dir", options.cache_dir))
    for option, path in files:
        if path is not None and not PurePosixPath(path).is_absolute():
            raise ValueError(f"{option} {path!r} must be an absolute path")


def _check_names(options: SlurmOptions) -> None:
    if options.job_name is not None and not NAME.fullmatch(options.job_name):
        raise ValueError(f"--job-name {options.job_name!r}: letters, digits and ._- only")
    if not MEMORY.fullmatch(options.mem):
        raise ValueError(f"--mem {options.mem!r}: a size like 0 (all of a node), 512G, 800000M")
    if options.gres is not None and not GRES.fullmatch(options.gres):
        raise ValueError(f"--gres {options.gres!r}: gpu:N or gpu:TYPE:N")


def check_gpu_request(options: SlurmOptions, gpus_per_node: int) -> None:
    """``--gres gpu[:type]:N`` must ask for the recipe's GPUs per node."""
    if options.gres is not None and int(GRES.fullmatch(options.gres)[1]) != gpus_per_node:
        raise ValueError(
            f"--gres {options.gres} asks for another GPU count than the recipe's "
            f"launch.gpus_per_node={gpus_per_node}"
        )
