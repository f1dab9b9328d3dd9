"""The bring-up kit's colocation check: registered for 8 GPUs, it skips with the reason while
the RL loop does not support ``rollout.placement=colocated`` (read at run time), and runs the
recipe with the engines the job starts itself (no kit engine URL)."""

from megatron_fork.rl import rl_loop
from tools.gpu_checks import colocated_check, registry
from tools.gpu_checks.core import SKIPPED, CheckContext


def test_it_is_registered_as_a_node_check_of_eight_gpus():
    (check,) = [c for c in registry.all_checks() if c.name == "colocated_1node"]
    assert check.needs.gpus == 8 and check.needs.sglang and check.subset == registry.NODE
    assert check.target == "tools.gpu_checks.colocated_check:check"


def test_it_skips_with_the_reason_until_the_loop_supports_colocation(tmp_path, monkeypatch):
    monkeypatch.delattr(rl_loop, "SUPPORTED_PLACEMENTS", raising=False)
    result = colocated_check.check(CheckContext(tmp_path, 60.0, 0.2))
    assert result.status == SKIPPED
    assert "does not release/resume engines yet" in result.detail
    monkeypatch.setattr(rl_loop, "SUPPORTED_PLACEMENTS", ("disaggregated", "colocated"),
                        raising=False)  # fmt: skip
    assert colocated_check.colocation_support() is None


def test_the_run_brings_no_engine_of_its_own(tmp_path):
    overrides = colocated_check.colocated_overrides(tmp_path / "m", tmp_path / "r", 2)
    assert "steps=2" in overrides and "parallel.context_parallel=2" in overrides
    assert not [o for o in overrides if o.startswith(("rollout.server_urls", "rollout.master"))]
