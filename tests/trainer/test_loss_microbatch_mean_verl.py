"""``normalizer="microbatch_selected_mean"`` through Megatron's real schedule equals the public
code's loss: a port of verl's micro-batch loop (the paper's fork, Shenzhi-Wang/
Beyond-the-80-20-Rule-RLVR, verl/workers/actor/dp_actor.py ``update_policy``, use_dynamic_bsz).

Per DP rank, four micro-batches of unequal rows and lengths; per micro-batch the top-20% mask of
``get_global_entropy_top_mask`` (verl/trainer/ppo/core_algos.py:53), the token mean of the
PPO-clip surrogate over it (``agg_loss`` token-mean = ``masked_mean``, sum / (count + 1e-8)),
times ``loss_scale_factor = rows_m / ppo_mini_batch_size`` (dp_actor.py:434, with the per-rank
mini-batch of fsdp_workers.py:235-236), backward accumulated; FSDP then averages gradients over
DP. The lookup-table model makes the gradient w.r.t. the table the gradient w.r.t. the logits.
"""

import dataclasses

import pytest
import torch

from megatron_fork.forking import ForkingLossConfig
from tests.support.distributed import run_distributed
from tests.support.reference import logprob_entropy, policy_loss, relative_error

VOCAB = 16
TOL = 1e-6
ROWS = ([1, 3, 2, 2], [2, 1, 4, 1])  # per DP rank: rows of its 4 micro-batches (8 each)
LENGTHS = ([8, 12, 4, 16], [12, 4, 16, 8])  # per DP rank: padded length of each micro-batch
CFG = dict(scope="local_microbatch", normalizer="microbatch_selected_mean")


def _microbatch(gen, rows, length, first_token):
    """[rows, length] tensors of one micro-batch; ``order`` indexes the lookup table."""
    prompt = torch.randint(1, length // 2, (rows,), generator=gen)
    response = torch.randint(1, length, (rows,), generator=gen)
    response[0] = 0 if rows > 2 else response[0]  # a row without response tokens still counts
    position = torch.arange(length)
    valid = (position >= prompt[:, None]) & (position < (prompt + response)[:, None])
    adv = 0.5 + torch.randn(rows, generator=gen, dtype=torch.float64)[:, None].expand(-1, length)
    return {
        "order": torch.arange(first_token, first_token + rows * length).view(rows, length),
        "target": torch.randint(0, VOCAB, (rows, length), generator=gen),
        "valid": valid,
        "advantages": adv.float(),
        "noise": 0.3 * torch.randn(rows, length, generator=gen, dtype=torch.float64),
    }


def make_data(dp: int, seed: int = 0) -> dict:
    """Micro-batches of each DP rank, an fp32 logit table, and old log-probs (fp32) from it."""
    gen = torch.Generator().manual_seed(seed)
    ranks, first = [], 0
    for d in range(dp):
        ranks.append([])
        for rows, length in zip(ROWS[d], LENGTHS[d], strict=True):
            ranks[d].append(_microbatch(gen, rows, length, first))
            first += rows * length
    table = (torch.randn(first, VOCAB, generator=gen, dtype=torch.float64) * 2.0).float()
    for mb in (mb for rank in ranks for mb in rank):
        logprob, _ = logprob_entropy(table.double()[mb["order"]], mb["target"])
        mb["old_logprob"] = (logprob + mb.pop("noise")).float()
    for mb in (mb for rank in ranks for mb in rank):  # drawn last: the data above is unchanged
        logprob, _ = logprob_entropy(table.double()[mb["order"]], mb["target"])
        noise = 0.2 * torch.randn(mb["target"].shape, generator=gen, dtype=torch.float64)
        mb["ref_logprob"] = (logprob + noise).float()
    return {"ranks": ranks, "table": table}


def verl_masked_mean(values, mask):
    """verl_F.masked_mean: sum over the mask / (count + 1e-8)."""
    return (values * mask).sum() / (mask.sum() + 1e-8)


def verl_regularizers(logprob, entropy, mb, cfg):
    """dp_actor.py:491-507 (the paper's fork): entropy and low_var_kl losses, each
    agg_loss(token-mean) over the response mask; kl_penalty clamps as core_algos.py:1480-1487."""
    valid, extra = mb["valid"].double(), 0.0
    if cfg.entropy_coef:
        extra = extra - cfg.entropy_coef * verl_masked_mean(entropy, valid)
    if cfg.kl_coef:
        kl = (mb["ref_logprob"].double() - logprob).clamp(-20, 20)
        kld = (torch.exp(kl) - kl - 1).clamp(-10, 10)
        extra = extra + cfg.kl_coef * verl_masked_mean(kld, valid)
    return extra


def verl_entropy_top_mask(entropy, response_mask, top_ratio):
    """Port of core_algos.get_global_entropy_top_mask (k = ceil by + 0.9999, torch.topk)."""
    flat_entropy, flat_mask = entropy.flatten(), response_mask.flatten().bool()
    response_entropy = flat_entropy[flat_mask]
    if response_entropy.numel() == 0:
        return torch.zeros_like(entropy, dtype=torch.long)
    top_k = max(1, int(len(response_entropy) * top_ratio + 0.9999))
    _, topk_idx = torch.topk(response_entropy, k=top_k)
    top_positions = flat_mask.nonzero(as_tuple=False).squeeze(1)[topk_idx]
    flat_out = torch.zeros_like(flat_entropy, dtype=torch.long)
    flat_out[top_positions] = 1
    return flat_out.view_as(entropy)


def verl_update(data: dict, cfg: ForkingLossConfig) -> dict:
    """verl's update_policy over one mini-batch on every DP rank, in fp64: the DP-averaged loss
    and gradient w.r.t. the table, and the number of selected tokens."""
    table = data["table"].double().requires_grad_(True)
    dp, loss, selected = len(data["ranks"]), 0.0, 0
    surrogate = dataclasses.replace(cfg, kl_coef=0.0, entropy_coef=0.0)  # terms added below
    for rank in data["ranks"]:
        ppo_mini_batch_size = sum(mb["valid"].shape[0] for mb in rank)  # per rank, normalised
        for mb in rank:
            logprob, entropy = logprob_entropy(table[mb["order"]], mb["target"])
            mask = verl_entropy_top_mask(entropy.detach(), mb["valid"], cfg.rho)
            token_sum = policy_loss(
                logprob,
                mb["old_logprob"].double(),
                mb["advantages"].double(),
                mask,
                1,
                surrogate,
                None,
            )  # -(sum of the surrogate over the mask): normaliser 1
            pg_loss = token_sum / (mask.sum() + 1e-8)  # agg_loss token-mean (masked_mean)
            pg_loss = pg_loss + verl_regularizers(logprob, entropy, mb, cfg)
            loss_scale_factor = mb["valid"].shape[0] / ppo_mini_batch_size
            scaled = pg_loss * loss_scale_factor
            (scaled / dp).backward()  # FSDP averages the gradient over DP
            loss, selected = loss + float(scaled.detach()) / dp, selected + int(mask.sum())
    return {"loss": torch.tensor(loss, dtype=torch.float64), "grad": table.grad, "n": selected}


def _shards(data, dp_rank, groups):
    from megatron_fork.trainer.policy_batch import PolicyMicroBatch

    shards = []
    for mb in data["ranks"][dp_rank]:
        rows, length = mb["order"].shape
        full = PolicyMicroBatch(
            tokens=mb["order"],
            position_ids=torch.arange(length).expand(rows, length),
            target=mb["target"],
            valid_mask=mb["valid"],
            old_logprob=mb["old_logprob"],
            advantages=mb["advantages"],
            token_order=mb["order"],
            ref_logprob=mb["ref_logprob"],
        )
        shards.append(full.context_parallel_shard(groups.cp))
    return shards


def _worker(rank, world, cp, per_token, cfg_fields, matches, data_path):
    from megatron.core import parallel_state as ps

    from megatron_fork.trainer.actor_step import (
        forward_backward_step,
        old_logprob_pass,
        prepare_step,
    )
    from megatron_fork.trainer.parallel_groups import LossGroups
    from tests.support.lookup_lm import LookupLM, lookup_config
    from tests.support.megatron_setup import init_megatron, wrap_ddp

    init_megatron(cp=cp)
    cfg = ForkingLossConfig(**cfg_fields)
    saved = torch.load(data_path, weights_only=True)
    data, ref = saved["data"], saved["reference"]
    groups = LossGroups.from_parallel_state()
    model = LookupLM(data["table"], lookup_config(1, cp, per_token))
    ddp_model = wrap_ddp(model)
    shards = _shards(data, ps.get_data_parallel_rank(), groups)
    old_pass = old_logprob_pass(ddp_model, shards, cfg, groups)
    prepared = prepare_step(ddp_model, cfg, shards, old_pass, groups)
    outputs = forward_backward_step(ddp_model, prepared, groups)
    assert sum(int(o["num_selected_tokens"]) for o in outputs) == ref["n"]
    loss = sum(o["loss"] for o in outputs)
    if per_token:  # the schedule's counts are the rows R; the reported sum is before dividing
        loss = loss / sum(mb["valid"].shape[0] for rank in data["ranks"] for mb in rank)
    errors = relative_error(loss, ref["loss"]), relative_error(model.table.main_grad, ref["grad"])
    if matches:
        assert max(errors) <= TOL, (errors, float(loss), float(ref["loss"]))
    else:  # the data tells the normalisers apart
        assert min(errors) > 1e-3, errors


def _run(tmp_path, dp, cp, per_token, cfg_fields=CFG, matches=True, reference_fields=CFG):
    data = make_data(dp)
    reference = verl_update(data, ForkingLossConfig(**reference_fields))
    assert abs(float(reference["loss"])) > 1e-2, "cancelling loss: change the data"
    path = tmp_path / "data.pt"
    torch.save({"data": data, "reference": reference}, path)
    run_distributed(_worker, dp * cp, cp, per_token, cfg_fields, matches, str(path))


LAYOUTS = {"single": (1, 1), "DP2": (2, 1), "DP2xCP2": (2, 2)}  # name: (DP, CP)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_microbatch_selected_mean_matches_verl_loop(tmp_path, layout):
    _run(tmp_path, *LAYOUTS[layout], per_token=False)


def test_microbatch_selected_mean_per_token_contract_matches_verl_loop(tmp_path):
    _run(tmp_path, 2, 2, per_token=True)


def test_selected_tokens_is_not_the_public_code_aggregation(tmp_path):
    """One global token mean over the step's selected tokens weights micro-batches by their
    selected tokens, not their rows: on this data it misses verl's loss and gradient."""
    _run(tmp_path, 2, 1, False, dict(CFG, normalizer="selected_tokens"), matches=False)


REGULARIZED = dict(CFG, entropy_coef=0.05, kl_coef=0.1)  # regularizer_tokens="response" default


@pytest.mark.parametrize(("layout", "per_token"), [("DP2", False), ("DP2xCP2", True)])
def test_kl_and_entropy_over_the_response_match_verl_loop(tmp_path, layout, per_token):
    """The paper's code adds agg_loss(entropy / kl, response_mask) per micro-batch, weighted
    by rows like the surrogate: regularizer_tokens="response" under the same normaliser."""
    _run(tmp_path, *LAYOUTS[layout], per_token, REGULARIZED, reference_fields=REGULARIZED)


def test_kl_and_entropy_on_the_selected_tokens_are_not_the_public_code(tmp_path):
    selected = dict(REGULARIZED, regularizer_tokens="selected")
    _run(tmp_path, 2, 1, False, selected, matches=False, reference_fields=REGULARIZED)
