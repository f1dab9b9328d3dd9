"""Fixtures shared across test packages."""

import pytest

from tests.support.distributed import run_distributed
from tests.support.tiny_run import warm_start_config


def _warm_start_worker(rank, world, out_dir):
    from megatron_fork.rl.warm_start import run_warm_start

    run_warm_start(warm_start_config(out_dir))


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
    """A tiny warm-started Qwen3 saved as a Hugging Face folder (the RL runs' base model)."""
    out = tmp_path_factory.mktemp("base") / "model"
    run_distributed(_warm_start_worker, 1, str(out))
    return out
