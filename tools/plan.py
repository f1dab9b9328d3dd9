"""Per-GPU memory and a rough step time of a recipe on a cluster, before anything is queued:

    python tools/plan.py qwen3_32b                               # the recipe as it is
    python tools/plan.py qwen3_32b parallel.tensor_parallel=4 --gpu-memory-gib 79.65
    python tools/plan.py qwen3_8b --mean-response-tokens 12000 --json plan.json
    python tools/plan.py qwen3_14b max_tokens_per_microbatch=45056   # a larger packing budget

Training is costed packed (the recipes' default) and padded, on the same samples, with the
ratio: what packing saves. Exits 2 with the breakdown when the layout does not fit (as
``python -m recipes`` does before a launch). Every figure is an estimate
(megatron_fork/planning: the formulas and their sources).
"""

import argparse
import dataclasses
import json
import sys
import warnings

warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")

from megatron_fork.planning import (  # noqa: E402
    H100_80GB,
    QWEN3_SIZES,
    LayoutDoesNotFit,
    Workload,
    compare_packing,
    estimate_step_time,
    largest_budget,
)
from recipes.checks import check_recipe, rollout_placement, training_layout  # noqa: E402
from recipes.registry import RECIPE_ERRORS, RECIPES, build_recipe, error_message  # noqa: E402


def _args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", choices=sorted(n for n in RECIPES if n != "tiny_cpu"))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--gpu-memory-gib", type=float, default=H100_80GB.gpu_memory_gib)
    parser.add_argument("--reserved-gib", type=float, default=H100_80GB.reserved_gib)
    parser.add_argument("--inter-node-gbps", type=float, default=H100_80GB.inter_node_gbps)
    parser.add_argument("--prompt-tokens", type=int, default=256, help="mean prompt length")
    parser.add_argument("--mean-response-tokens", type=int, default=8192)
    parser.add_argument("--json", help="also write the figures here")
    return parser.parse_intermixed_args(argv)


def _workload(recipe, args) -> Workload:
    rollout = recipe.config.rollout
    return Workload(
        prompts_per_step=rollout.prompts_per_step,
        samples_per_prompt=rollout.samples_per_prompt,
        prompt_tokens=args.prompt_tokens,
        mean_response_tokens=args.mean_response_tokens,
        mini_batches_per_step=recipe.config.mini_batches_per_step,
        generation_rounds=rollout.prompts_per_round / rollout.prompts_per_step,
        max_response_tokens=rollout.max_new_tokens,
    )


def main(argv=None) -> None:
    args = _args(argv)
    try:
        recipe = build_recipe(args.recipe, args.overrides)
    except RECIPE_ERRORS as error:
        raise SystemExit(f"plan: error: {error_message(error)}") from None
    launch = recipe.launch
    cluster = dataclasses.replace(
        H100_80GB,
        gpu_memory_gib=args.gpu_memory_gib,
        reserved_gib=args.reserved_gib,
        inter_node_gbps=args.inter_node_gbps,
        nodes=launch.train_nodes + launch.engines.nodes,
        gpus_per_node=launch.gpus_per_node,
    )
    try:
        plan = check_recipe(recipe, cluster)
    except LayoutDoesNotFit as refused:
        print(refused, file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as error:
        raise SystemExit(f"plan: error: {error}") from None
    model = QWEN3_SIZES[launch.model]
    layout, engines = training_layout(recipe), rollout_placement(recipe)
    workload = _workload(recipe, args)
    try:
        times = estimate_step_time(model, layout, engines, cluster, workload)
        packing = compare_packing(model, layout, cluster, workload)
    except ValueError as error:
        raise SystemExit(f"plan: error: {error}") from None
    packing["largest max_tokens_per_microbatch that fits"] = largest_budget(
        model, layout, engines, cluster
    )
    print(plan.table())
    print()
    print(times.table())
    print()
    print(_packing_table(packing))
    if args.json:
        figures = {"memory": plan.as_dict(), "step_time": times.as_dict(), "packing": packing}
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


def _packing_table(packing: dict) -> str:
    lines = ["ESTIMATE: training per RL step, packed against padded rows (the same samples)"]
    for name, value in packing.items():
        shown = f"{value:10.2f}" if isinstance(value, float) else f"{value!s:>10}"
        lines.append(f"  {name:<44}{shown}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
