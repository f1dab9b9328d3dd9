"""``pip install ".[launch]"`` brings what ``python -m recipes`` imports, and the extras agree with
the exact CPU pins (requirements/cpu.txt).

Every third-party module that ``recipes.__main__`` reaches in the source (function-level imports
included: NeMo-Run is imported only to launch; tests/support/import_graph.py) must belong to a
distribution that the package's dependencies or its ``launch`` extra declare."""

import importlib.metadata as metadata
import re
import tomllib

from packaging.requirements import Requirement

from tests.support.import_graph import ROOT, third_party_imports
from tools.container_smoke import pinned

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(*extras: str) -> list[Requirement]:
    lines = list(PROJECT["dependencies"])
    for extra in extras:
        lines += PROJECT["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def test_the_walk_sees_function_level_and_transitive_imports():
    imports = third_party_imports("recipes.__main__")
    assert imports["nemo_run"].startswith("recipes.launch")  # imported inside cli._launch
    assert {"torch", "megatron", "tokenizers"} <= set(imports)  # via recipes.checks / registry


def test_the_recipes_cli_imports_only_what_dependencies_and_launch_declare():
    declared = {_normal(r.name) for r in _requirements("launch")}
    distributions = metadata.packages_distributions()
    undeclared = {
        top: (module, distributions.get(top))
        for top, module in third_party_imports("recipes.__main__").items()
        if not {_normal(d) for d in distributions.get(top, [])} & declared
    }
    assert not undeclared, (
        f"imported by the CLI but not declared (module: importer, dists): {undeclared}"
    )


def test_launch_extra_pins_nemo_run_and_leptonai_as_the_cpu_environment_does():
    launch = {
        _normal(r.name): str(r.specifier)
        for r in map(Requirement, PROJECT["optional-dependencies"]["launch"])
    }
    cpu = {_normal(k): v for k, v in pinned(ROOT / "requirements" / "cpu.txt").items()}
    assert launch["nemo-run"] == f"=={cpu['nemo-run']}"
    assert launch["leptonai"] == f"=={cpu['leptonai']}"


def test_every_declared_requirement_admits_the_exact_cpu_pin():
    """The CPU set is one install of the package with every extra: each dependency and extra
    must allow its pin (an exact pin in an extra must be the same version)."""
    cpu = {_normal(k): v for k, v in pinned(ROOT / "requirements" / "cpu.txt").items()}
    extras = tuple(PROJECT["optional-dependencies"])
    assert {"dev", "launch"} <= set(extras)
    for requirement in _requirements(*extras):
        name = _normal(requirement.name)
        assert name in cpu, f"{requirement} has no pin in requirements/cpu.txt"
        assert requirement.specifier.contains(cpu[name], prereleases=True), (requirement, cpu[name])
