"""Patch: the distributed optimizer keeps torch Adam's per-parameter step through checkpoints.

What: on the torch-Adam path (no Apex, no Transformer Engine: the CPU case) of
``DistributedOptimizer``, (1) before ``state_dict`` runs on an optimizer that has not stepped
yet, every parameter shard gets the state Adam's first step would create (Megatron's own
``init_state_fn``: zero ``exp_avg`` and ``exp_avg_sq``; plus ``step = 0``), so the next step
computes exactly what it would have from empty state; (2) after ``load_state_dict``, every
parameter's ``state["step"]`` is its own tensor holding the checkpoint's step.
Why: torch's AdamW keeps the iteration per parameter, FusedAdam in the param groups, and
megatron-core 0.16.1 ``optimizer/distrib_optimizer.py`` handles the former badly: (1)
``state_dict`` asserts one step among the parameters' states (lines 639-642), an empty set
before the first step, and ``sharded_state_dict(is_loading=True)`` calls it first, so resuming
into a freshly built optimizer raised ``AssertionError``; (2) ``load_state_dict`` gives all
parameters one shared step tensor (lines 818-825) and the ``dp_reshardable`` load then copies
the step held before the load into it (``_set_main_param_and_optimizer_states``, line 940), so
a resumed run took its next step with step 0, and torch's in-place ``step += 1`` on the shared
tensor counted once per parameter thereafter.
Verified: megatron-core 0.16.1 with torch 2.13.0 (CPU build).
Can go: when the torch-Adam path reads and writes the step through the param groups.
"""

import torch
from megatron.core.optimizer import distrib_optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

NAME = "distributed_optimizer_adam_step"


def _give_unstepped_adam_its_state(optimizer: DistributedOptimizer) -> None:
    inner = optimizer.optimizer  # torch AdamW over this rank's main-weight shards
    if distrib_optimizer.HAVE_APEX_OR_TE or len(inner.state) > 0:
        return
    optimizer.init_state_fn(inner, optimizer.config)
    for group in inner.param_groups:
        for param in group["params"]:
            inner.state[param]["step"] = torch.tensor(0.0)  # as torch's Adam starts it


def _restore_own_steps(optimizer: DistributedOptimizer, state_dict: dict) -> None:
    if distrib_optimizer.HAVE_APEX_OR_TE:
        return
    (step,) = {group["step"] for group in state_dict["optimizer"]["param_groups"]}
    for state in optimizer.optimizer.state.values():
        state["step"] = torch.tensor(float(step))


def apply():
    """Install the patch; return a function that undoes it."""
    original_state_dict = DistributedOptimizer.state_dict
    original_load_state_dict = DistributedOptimizer.load_state_dict

    def state_dict(self):
        _give_unstepped_adam_its_state(self)
        return original_state_dict(self)

    def load_state_dict(self, state_dict):
        original_load_state_dict(self, state_dict)
        _restore_own_steps(self, state_dict)

    DistributedOptimizer.state_dict = state_dict
    DistributedOptimizer.load_state_dict = load_state_dict

    def undo():
        DistributedOptimizer.state_dict = original_state_dict
        DistributedOptimizer.load_state_dict = original_load_state_dict

    return undo
