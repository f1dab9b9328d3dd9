"""What this machine has for the kit, and why a check whose needs it lacks is skipped.

sglang lives in its own interpreter in the container (``SGLANG_PYTHON``, as ``recipes.
engine_task`` launches it), so it is looked for there, in a child process; without the variable,
in this interpreter."""

import importlib.util
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from tools.gpu_checks.core import Needs
from tools.gpu_checks.registry import NODE, SINGLE_GPU

SGLANG_PYTHON = "SGLANG_PYTHON"
VLLM_PYTHON = "VLLM_PYTHON"
_FIND = "import importlib.util, sys; sys.exit(importlib.util.find_spec({!r}) is None)"


@dataclass(frozen=True)
class Machine:
    gpus: int
    """CUDA devices torch sees (0: none, or no CUDA build)."""
    transformer_engine: bool
    sglang_python: str | None
    """The interpreter that imports sglang; None: none found."""
    vllm_python: str | None = None
    """The interpreter that imports vLLM (the container's own environment); None: none found."""

    def to_dict(self) -> dict:
        return asdict(self)


def sglang_interpreter(environ=os.environ) -> str:
    return environ.get(SGLANG_PYTHON) or sys.executable


def vllm_interpreter(environ=os.environ) -> str:
    return environ.get(VLLM_PYTHON) or sys.executable


def _imports(python: str, module: str = "sglang") -> bool:
    try:
        code = _FIND.format(module)
        done = subprocess.run([python, "-c", code], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def probe(look_for_sglang: bool = True) -> Machine:
    """This machine (torch is imported here; CUDA is not initialised in this process)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    te = importlib.util.find_spec("transformer_engine") is not None
    python, vllm = sglang_interpreter(), vllm_interpreter()
    found = look_for_sglang and _imports(python, "sglang")
    vllm_found = look_for_sglang and _imports(vllm, "vllm")
    return Machine(gpus, te, python if found else None, vllm if vllm_found else None)


def skip_reason(needs: Needs, machine: Machine) -> str | None:
    """Why a check with ``needs`` cannot run here ("needs ..."), or None when it can."""
    missing = []
    if needs.gpus and machine.gpus == 0:
        missing.append("CUDA (no CUDA device)")
    elif needs.gpus > machine.gpus:
        missing.append(f"{needs.gpus} GPUs (this machine has {machine.gpus})")
    if needs.transformer_engine and not machine.transformer_engine:
        missing.append("Transformer Engine (transformer_engine does not import)")
    if needs.sglang and machine.sglang_python is None:
        missing.append(f"sglang (not importable by {sglang_interpreter()}; set {SGLANG_PYTHON})")
    if needs.vllm and machine.vllm_python is None:
        missing.append(f"vLLM (not importable by {vllm_interpreter()}; set {VLLM_PYTHON})")
    return "needs " + "; ".join(missing) if missing else None


def auto_subset(machine: Machine) -> str:
    """``node`` where the production stack is here (GPUs, Transformer Engine and sglang; a node
    with fewer GPUs than a check needs lists it as skipped), else ``single-gpu``."""
    full_stack = machine.gpus > 0 and machine.transformer_engine and machine.sglang_python
    return NODE if full_stack else SINGLE_GPU
