"""The ablation tool's tasks name real recipe functions, and the templated task's recipe is the
demo's RL recipe on the templated data (the arms then differ only in the loss settings)."""

import inspect

from recipes import tiny_qwen3_cpu
from tools.ablation import TASKS


def test_every_task_names_a_base_model_builder_and_an_rl_recipe(tmp_path):
    for task, (build, recipe) in TASKS.items():
        assert callable(getattr(tiny_qwen3_cpu, build)), task
        assert list(inspect.signature(getattr(tiny_qwen3_cpu, recipe)).parameters)[:3] == [
            "base_model",
            "output_dir",
            "seed",
        ], task
    fold = tiny_qwen3_cpu.rl(tmp_path / "base", tmp_path / "run", 3)
    templated = tiny_qwen3_cpu.rl_templated(tmp_path / "base", tmp_path / "run", 3)
    assert fold.data.task == "fold" and templated.data.task == "templated"
    assert templated.loss == fold.loss and templated.seed == fold.seed == 3
