"""The Dockerfile's pins agree with the code and with the CPU environment, and the image is
built the way the README says (no Docker engine here: what this cannot show is listed in the
README's "Container" section). hadolint runs on it in ``make lint``."""

import re
import subprocess
from pathlib import Path

from megatron_fork.rollout.sglang_protocol import SGLANG_VERSION
from tools.container_smoke import pinned

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE).group(1)


def test_sglang_is_pinned_to_the_protocol_version_the_code_speaks():
    assert _arg("SGLANG_VERSION") == SGLANG_VERSION


def test_the_base_image_is_a_fixed_ngc_pytorch_tag():
    image = _arg("NGC_PYTORCH")
    assert image.startswith("nvcr.io/nvidia/pytorch:") and re.fullmatch(r".*:\d\d\.\d\d-py3", image)
    assert re.search(r"^FROM \$\{NGC_PYTORCH\}$", DOCKERFILE, re.MULTILINE)


def test_container_pins_are_exact_and_agree_with_the_cpu_environment():
    lines = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements" / "container.txt").read_text().splitlines()
    ]
    requirements = [line for line in lines if line]
    container = pinned(ROOT / "requirements" / "container.txt")
    assert len(container) == len(requirements)  # every line is an exact pin
    assert not {"torch", "transformer-engine", "apex"} & set(container)  # the base image's own
    cpu = pinned(ROOT / "requirements" / "cpu.txt")
    for shared in ("megatron-core", "nemo-run", "leptonai", "math-verify", "pyarrow"):
        assert container[shared] == cpu[shared], shared


def test_transformer_engine_range_is_the_one_megatron_core_declares():
    from importlib.metadata import requires

    te = [r for r in requires("megatron-core") if r.startswith("transformer-engine")]
    assert te, "megatron-core no longer declares a Transformer Engine range"
    bounds = te[0].split(";")[0].split("]")[-1]  # e.g. "<2.12.0,>=2.9.0a0"
    upper = next(b for b in bounds.split(",") if b.startswith("<"))
    lower = next(b for b in bounds.split(",") if b.startswith(">="))
    assert upper.removeprefix("<").startswith(_arg("TE_BELOW_VERSION"))
    assert lower.removeprefix(">=").startswith(_arg("TE_MIN_VERSION"))


def test_the_image_runs_as_a_numeric_non_root_user_with_a_smoke_command():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'CMD ["python", "/opt/megatron-fork/tools/container_smoke.py"]' in DOCKERFILE


def test_hadolint_passes():
    hadolint = ROOT / ".venv" / "bin" / "hadolint"
    command = [str(hadolint) if hadolint.exists() else "hadolint", str(ROOT / "Dockerfile")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
