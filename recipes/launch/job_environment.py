"""The environment a Slurm job's tasks run in, and the sbatch lines that set it up.

Every value given by a user reaches the script through ``shell.script_word``. Variables the
launcher sets are also named in pyxis's ``--container-env``: pyxis otherwise lets the image's own
value win for any variable the image defines (pyxis 0.24.0 ``args.c`` ``--container-env`` help;
``spank_import_container_env`` overwrites the job's value unless the name is listed)."""

import shlex

from recipes.launch.shell import script_word
from recipes.launch.slurm_options import SlurmOptions

TRAINER_ENV = {
    # Megatron-Core's TP/SP communication overlap relies on one CUDA work queue.
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    # Megatron's fused SwiGLU / bias-dropout-add are torch.compile'd on each rank's first step:
    # one compile worker per rank, not a pool of one per core on each of the node's 8 ranks.
    "TORCHINDUCTOR_COMPILE_THREADS": "1",
    # torchrun's copy of each rank's output (--tee) starts with the global rank.
    "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": script_word("[rank${rank}]:"),
}
CACHES = {
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",
    "SGLANG_DG_CACHE_DIR": "deep_gemm",
    "SGLANG_CACHE_DIR": "sglang",
    "CUDA_CACHE_PATH": "cuda",
    "HF_HOME": "huggingface",
}
"""JIT and download caches, each default under ``~`` (which the container may lack or share with
every other job): a folder each under the job's cache directory. Not ``XDG_CACHE_HOME``: pyxis
hands the job's environment to enroot on the host (pyxis_slurmstepd.c:431-436, no ``XDG_*`` on
its deny list), and enroot keeps its image layer cache under ``$XDG_CACHE_HOME/enroot`` unless
the site pins ``ENROOT_CACHE_PATH`` (enroot.in:75,82): a registry image would be downloaded
again into every job's folder on every node."""
DEFAULT_CACHE_ROOT = "/tmp/rlvr-$SLURM_JOB_ID"
"""The container's /tmp (enroot mounts a tmpfs there), one folder per job."""
NETWORK_KEYS = (
    "NCCL_SOCKET_IFNAME",
    "NCCL_SOCKET_FAMILY",
    "NCCL_IB_HCA",
    "NCCL_IB_GID_INDEX",
    "NCCL_IB_TC",
    "NCCL_IB_SL",
    "NCCL_IB_DISABLE",
    "NCCL_IB_TIMEOUT",
    "NCCL_IB_RETRY_CNT",
    "NCCL_NET",
    "NCCL_NET_GDR_LEVEL",
    "NCCL_CROSS_NIC",
    "NCCL_TOPO_FILE",
    "NCCL_DEBUG",
    "NCCL_DEBUG_SUBSYS",
    "GLOO_SOCKET_IFNAME",
)
"""The network settings a login shell may carry for the job (an allow-list: a module system's
``NCCL_HOME``/``NCCL_ROOT``/``NCCL_VERSION`` are the login node's, not the image's)."""
API_KEY = "SGLANG_API_KEY"
VLLM_API_KEY = "VLLM_API_KEY"
"""The same key under vLLM's own name (vLLM reads it from there; ``rollout.backend=vllm``)."""
HOST_PYTHON = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
"""sbatch exports the submitting shell's environment: a login node's Python settings must not
reach the container's interpreters (unless given with ``--env``)."""


def network_env(environ) -> tuple[str, ...]:
    """``KEY=VALUE`` of the submitting shell's NCCL/Gloo network settings."""
    names = sorted(k for k in environ if k in NETWORK_KEYS)
    return tuple(f"{k}={environ[k]}" for k in names)


def cache_env(cache_dir: str | None) -> dict[str, str]:
    """One folder per job under ``--cache-dir`` too (JIT caches lock files there; jobs must not
    share them): the job id is appended unquoted, so the job's shell expands it."""
    root = DEFAULT_CACHE_ROOT
    if cache_dir is not None:
        root = f"{script_word(cache_dir.rstrip('/'))}/$SLURM_JOB_ID"
    return {key: f"{root}/{leaf}" for key, leaf in CACHES.items()}


def task_env(options: SlurmOptions, base: dict[str, str]) -> dict[str, str]:
    """What one node group's tasks get: its own settings, the site defaults, the submitting
    shell's network settings, then ``--env`` (last wins). Values are script words."""
    given = [item.split("=", 1) for item in (*options.network_env, *options.env)]
    return {
        **base,
        "PYTHONNOUSERSITE": "1",  # a mounted home's ~/.local must not shadow the image
        **cache_env(options.cache_dir),
        **{key: script_word(value) for key, value in given},
    }


def unset_host_python_line(options: SlurmOptions) -> str:
    given = {item.split("=", 1)[0] for item in options.env}
    return "unset " + " ".join(name for name in HOST_PYTHON if name not in given)


def api_key_lines(options: SlurmOptions) -> list[str]:
    """The engines' API key, exported for both node groups with tracing off (the template's
    ``set -x`` would print it): read from ``--api-key-file`` in the job, else 32 random bytes
    made in the job; one key under sglang's and vLLM's names. It never appears in the script."""
    if options.api_key_file is None:
        source = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
        missing = "no random bytes for the API key"
    else:
        source = f"cat -- {shlex.quote(options.api_key_file)}"
        missing = f"no API key in {options.api_key_file} (--api-key-file)"
    return [
        "set +x  # the engines' API key stays out of the log",
        f"export {API_KEY}=$({source})",
        f'[ -n "${API_KEY}" ] || {{ echo {shlex.quote("recipes: " + missing)} >&2; exit 1; }}',
        f'export {VLLM_API_KEY}="${API_KEY}"',
        "set -x",
    ]


def container_env(env: dict[str, str], *setup_keys: str) -> list[str]:
    """Names whose job value must win over the image's inside the container."""
    return sorted({*env, *setup_keys})
