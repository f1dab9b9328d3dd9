"""The ablation the paper never ran with seeds: token-selection strategies (top 20%, all
tokens, bottom 80%, random 20%) or a rho sweep (top 10/20/50%), each over several RL seeds
from one shared base model, on the tiny Qwen3 of ``make demo`` (its recipe, 40 RL steps).
Prints mean +- std of the final held-out accuracy per arm and writes ``ablation.json`` and
``ablation.png``.

    python tools/ablation.py [--output runs/ablation] [--seeds 0 1 2] [--sweep strategy|rho]
                             [--task fold|templated] [--model 0.8M|3.0M] [--set steps=40 ...]
                             [--arms "top 20%" "all tokens"] [--report-only]

``--task templated``: the task in the paper's regime (``DataConfig(task="templated")``, its own
base model and recipe, ``recipes/tiny_qwen3_cpu.rl_templated``); use another ``--output``.
``--model`` (templated task only): the base model's size (``TEMPLATED_MODELS``), each size in
its own ``--output``. The strategy sweep writes ``ablation.json``/``.png``, the rho sweep
``ablation_rho.json``/``.png``; the two sweeps share the top-20% runs.

Each (arm, seed) run is its own folder; a finished one with the same settings is not rerun, so
an interrupted ablation continues where it stopped. ``--report-only`` writes the table and plot
of the runs finished so far (an arm with none is left out; the seeds column says how many).
"""

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine|full scope is deprecated).*")

DEFAULT_OVERRIDES = ["steps=40", "eval.every=0"]
"""On the demo's recipe: 40 RL steps per run, evaluations before and after only, so 4 arms x 3
seeds fit 90 minutes on 2 cores (measured: 68 minutes). ``--set`` comes after these."""

ARMS = {
    "strategy": {
        "top 20%": ["loss.strategy=top", "loss.rho=0.2"],
        "all tokens": ["loss.strategy=all"],
        "bottom 80%": ["loss.strategy=bottom", "loss.rho=0.8"],
        "random 20%": ["loss.strategy=random", "loss.rho=0.2"],
    },
    "rho": {
        "top 10%": ["loss.strategy=top", "loss.rho=0.1"],
        "top 20%": ["loss.strategy=top", "loss.rho=0.2"],
        "top 50%": ["loss.strategy=top", "loss.rho=0.5"],
    },
}


TASKS = {  # task: (the base model's builder, the RL recipe), in recipes.tiny_qwen3_cpu
    "fold": ("ensure_base_model", "rl"),
    "templated": ("ensure_templated_base_model", "rl_templated"),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sweep", choices=sorted(ARMS), default="strategy")
    parser.add_argument("--task", choices=sorted(TASKS), default="fold")
    parser.add_argument("--model", default="0.8M", help="templated task: TEMPLATED_MODELS size")
    parser.add_argument(
        "--arms", nargs="+", default=None, help='a part of the sweep, e.g. "top 20%%" "all tokens"'
    )
    parser.add_argument(
        "--report-only", action="store_true", help="tables and plot of the finished runs only"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    return parser.parse_args()


def chosen_arms(sweep: str, names: list[str] | None) -> dict:
    """The sweep's arms, or the ones named (in the sweep's order)."""
    arms = ARMS[sweep]
    unknown = sorted(set(names or ()) - set(arms))
    if unknown:
        raise SystemExit(f"--arms {unknown}: the {sweep} sweep has {list(arms)}")
    return {arm: value for arm, value in arms.items() if names is None or arm in names}


def finished_run(run_dir: Path, overrides: list[str], task: str) -> dict | None:
    """The summary of a finished run with these settings, or None."""
    from megatron_fork.reporting.run_report import SUMMARY_FILE

    done = run_dir / SUMMARY_FILE
    if not done.is_file():
        return None
    summary = json.loads(done.read_text())
    same = summary.get("overrides") == overrides and summary.get("task", "fold") == task
    return summary if same else None


def run_arm(base: Path, run_dir: Path, seed: int, overrides: list[str], task: str = "fold") -> dict:
    """One RL run (fresh unless it finished with these settings); its summary."""
    import shutil

    from megatron_fork.reporting.run_report import write_run_report
    from megatron_fork.rl.overrides import apply_overrides
    from megatron_fork.rl.rl_loop import run_rl
    from recipes import tiny_qwen3_cpu

    summary = finished_run(run_dir, overrides, task)
    if summary is not None:  # keep the finished run
        return summary
    shutil.rmtree(run_dir / "run", ignore_errors=True)
    config = getattr(tiny_qwen3_cpu, TASKS[task][1])(base, run_dir / "run", seed)
    config = apply_overrides(config, [*overrides, "progress=False", "tensorboard=False"])
    start = time.perf_counter()
    run_rl(config)
    return write_run_report(
        run_dir / "run",
        run_dir,
        {
            "wall_seconds": time.perf_counter() - start,
            "seed": seed,
            "overrides": overrides,
            "task": task,
        },
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, runs in enumerate(results.values()):
        finals = [r["final_accuracy"] for r in runs]
        ax.scatter([i] * len(finals), finals, alpha=0.6)
        ax.errorbar(i, statistics.mean(finals), yerr=_std(finals), fmt="k_", capsize=8)
    base = statistics.mean(r["base_accuracy"] for runs in results.values() for r in runs)
    ax.axhline(base, color="gray", linestyle="--", label="base model")
    ax.set_xticks(range(len(results)), list(results))
    ax.set_ylabel("final held-out accuracy (avg@k)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    args = parse_args()
    from recipes import tiny_qwen3_cpu

    arms = chosen_arms(args.sweep, args.arms)  # refused before anything runs
    output = Path(args.output)
    build_base = getattr(tiny_qwen3_cpu, TASKS[args.task][0])
    if args.task == "templated":
        base, _ = build_base(output, seed=0, model=args.model)
    elif args.model != "0.8M":
        raise SystemExit("--model: the fold task has one model size (0.8M)")
    else:
        base, _ = build_base(output, seed=0)
    start = time.perf_counter()
    results = {}
    for arm, arm_overrides in arms.items():
        results[arm] = []
        for seed in args.seeds:
            run_dir = output / arm.replace(" ", "_").replace("%", "pct") / f"seed{seed}"
            overrides = [*DEFAULT_OVERRIDES, *arm_overrides, *args.set]
            if args.report_only:
                summary = finished_run(run_dir, overrides, args.task)
                if summary is None:
                    continue
            else:
                summary = run_arm(base, run_dir, seed, overrides, args.task)
            results[arm].append(summary)
            print(
                f"{arm} seed {seed}: {summary['base_accuracy']:.3f} -> "
                f"{summary['final_accuracy']:.3f}",
                flush=True,
            )
    write_report(results, args, output, time.perf_counter() - start)


def write_report(results: dict, args, output: Path, wall_seconds: float) -> None:
    """``ablation.json`` (``ablation_rho.json``) and the plot of the runs in ``results``, and
    the table on stdout; an arm without runs (``--report-only``) is left out."""
    results = {arm: runs for arm, runs in results.items() if runs}  # --report-only
    table = {
        arm: {
            "final_mean": statistics.mean(r["final_accuracy"] for r in runs),
            "final_std": _std([r["final_accuracy"] for r in runs]),
            "base_mean": statistics.mean(r["base_accuracy"] for r in runs),
            "seeds": len(runs),
            "finals": [r["final_accuracy"] for r in runs],
        }
        for arm, runs in results.items()
    }
    report = {
        "sweep": args.sweep,
        "task": args.task,
        "model": args.model,
        "arms": table,
        "wall_seconds": wall_seconds,
    }
    stem = "ablation" if args.sweep == "strategy" else f"ablation_{args.sweep}"
    (output / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, output / f"{stem}.png")
    print(f"\n{'arm':<12} {'base':>7} {'final (mean +- std)':>22}")
    for arm, row in table.items():
        print(
            f"{arm:<12} {row['base_mean']:7.3f} {row['final_mean']:12.3f} +- {row['final_std']:.3f}"
        )
    print(f"wall {report['wall_seconds']:.0f} s; report in {output}/{stem}.json and .png")


if __name__ == "__main__":
    main()
