"""Colocated engines and trainer (``planning/colocation.py``): each phase's memory against a hand
calculation, the refusal naming the phase that does not fit, and the step time with all GPUs
decoding plus the release/resume costs."""

import dataclasses

import pytest

from megatron_fork.planning import (
    H100_80GB,
    LayoutDoesNotFit,
    RolloutPlacement,
    Workload,
    estimate_step_time,
    plan_memory,
)
from megatron_fork.planning.memory import training_breakdown
from tests.planning.layouts import GIB, QWEN3_8B
from tests.planning.layouts import layout as _layout

ONE_NODE = dataclasses.replace(H100_80GB, nodes=1)
LAYOUT = _layout(tensor_parallel=4, context_parallel=2, data_parallel=1)  # 8 GPUs, bf16
ENGINES = RolloutPlacement(True, 4, 2, False, release_between_phases=True)  # 4 x TP2 = 8 GPUs

# By hand, Qwen3-8B at TP4 (first and last stage at once): per layer 2 * 4096^2 (q, o)
# + 2 * 4096 * 1024 (k, v) + 3 * 4096 * 12288 (gate, up, down) = 192,937,984 linear weights,
# / 4 = 48,234,496, x 36 = 1,736,441,856; norms 8,448 x 36 = 304,128; vocab 151936 padded to
# a multiple of 128 x 4 = 152,064, / 4 x 4096 = 155,713,536 each for embedding and output
# layer (untied), + the final norm's 4096.
LOCAL_PARAMS = 1_736_441_856 + 304_128 + 2 * 155_713_536 + 4096
ENGINE_WEIGHTS = 2 * 8_190_735_360 // 2  # the whole model in bf16 over engine TP 2
POOL = int(0.8 * 81559 * 2**20)  # mem_fraction_static x the GPU
RESIDUE = 3 * GIB  # a released engine's / an offloaded trainer's (colocation.py)
BUCKET = 512 * 2**20


def test_each_phase_matches_the_hand_calculation():
    plan = plan_memory(QWEN3_8B, LAYOUT, ENGINES, ONE_NODE)
    # trainer state: 2 + 4 bytes/param, Adam 12 bytes/param over DP x CP = 2
    assert plan.breakdown["weights (bf16)"] == 2 * LOCAL_PARAMS
    assert plan.breakdown["gradients (fp32 main grads)"] == 4 * LOCAL_PARAMS
    assert plan.breakdown["optimizer (fp32 master, Adam m, v)"] == 6 * LOCAL_PARAMS
    training = sum(training_breakdown(QWEN3_8B, LAYOUT, 0).values())
    assert plan.phase_totals == {
        "training": training + RESIDUE,
        "weight sync": 2 * LOCAL_PARAMS + BUCKET + ENGINE_WEIGHTS + RESIDUE,
        "rollout": POOL + RESIDUE,  # engine weights + KV cache fill the pool
    }
    assert plan.phases["rollout"]["engine weights"] == ENGINE_WEIGHTS
    assert plan.total == POOL + RESIDUE and plan.fits
    # the old rule, max(training, engine pool), missed what the other side keeps
    assert plan.total > max(plan.training_total, plan.engine.pool)
    table = plan.table()
    for phase in ("training phase total", "weight sync phase total", "rollout phase total"):
        assert phase in table


def test_what_the_trainer_keeps_during_rollout_is_counted():
    keep_weights = dataclasses.replace(ENGINES, trainer_offload="optimizer")
    plan = plan_memory(QWEN3_8B, LAYOUT, keep_weights, ONE_NODE)
    assert plan.phase_totals["rollout"] == POOL + RESIDUE + 2 * LOCAL_PARAMS
    assert plan.phase_totals["weight sync"] == 2 * LOCAL_PARAMS + BUCKET + ENGINE_WEIGHTS + RESIDUE


def test_a_rollout_phase_that_does_not_fit_is_refused_with_its_breakdown():
    # everything stays: 12 x 2.05B = 22.9 GiB of trainer state beside a 63.7 GiB pool
    keep_all = dataclasses.replace(ENGINES, trainer_offload="none")
    plan = plan_memory(QWEN3_8B, LAYOUT, keep_all, ONE_NODE)
    assert plan.phase_totals["rollout"] == POOL + RESIDUE + 12 * LOCAL_PARAMS
    assert plan.phase_totals["training"] <= plan.capacity < plan.phase_totals["rollout"]
    with pytest.raises(LayoutDoesNotFit) as refused:
        plan.require_fit()
    message = str(refused.value)
    assert f"{(POOL + RESIDUE + 12 * LOCAL_PARAMS) / GIB:.1f} GiB needed" in message
    assert "rollout phase total" in message and "DOES NOT FIT" in message
    assert "trainer optimizer (fp32 master, Adam m, v)" in message
    assert "trainer_offload='all'" in message and "lower mem_fraction_static" in message
    assert "recompute='full'" not in message  # training fits: its levers are not offered


def test_colocated_step_decodes_on_every_gpu_and_pays_the_hand_over():
    workload = Workload(512, 16, 256, 8192, 16, generation_rounds=1.5, max_response_tokens=20480)
    colocated = estimate_step_time(QWEN3_8B, LAYOUT, ENGINES, ONE_NODE, workload)
    # offload "all": bf16 weights + Adam state (2 + 6 bytes/param) to host and back, over
    # PCIe Gen5 (64 GB/s) at the assumed 70% link efficiency
    moved = (2 + 6) * LOCAL_PARAMS
    assert colocated.phases["trainer offload + reload (host)"] == pytest.approx(
        2 * moved / (64e9 * 0.7)
    )
    assert colocated.phases["engine release + resume"] == 1.0
    # the weight sync stays on the node: NVLink, not InfiniBand
    assert colocated.phases["weight sync"] == pytest.approx(2 * 8_190_735_360 / (450e9 * 0.7))
    # the same engines on their own GPUs: no hand-over, the same decode
    apart = dataclasses.replace(ENGINES, colocated=False, release_between_phases=False)
    separate = estimate_step_time(QWEN3_8B, LAYOUT, apart, H100_80GB, workload)
    assert "trainer offload + reload (host)" not in separate.phases
    assert colocated.phases["rollout decode"] == separate.phases["rollout decode"]
    # half the engines (4 GPUs of 8) decode about twice as long
    half = dataclasses.replace(apart, engines=2)
    slower = estimate_step_time(QWEN3_8B, LAYOUT, half, H100_80GB, workload)
    assert slower.phases["rollout decode"] > 1.8 * colocated.phases["rollout decode"]


def test_placement_fields_are_validated_by_name():
    with pytest.raises(ValueError, match="trainer_offload"):
        RolloutPlacement(True, 4, 2, False, release_between_phases=True, trainer_offload="half")
    with pytest.raises(ValueError, match="engine_backend"):
        RolloutPlacement(True, 4, 2, False, engine_backend="trt")
