"""A run that stopped for good (dynamic sampling ran out under the paper's behaviour) leaves a
marker, and the next attempt on its output directory refuses before taking the lock, naming
the reason and the way out, instead of regenerating the same rounds."""

import pytest

from megatron_fork.rl.dynamic_sampling import DynamicSamplingExhausted
from megatron_fork.rl.rl_loop import _start_lock
from megatron_fork.rl.run_lock import LOCK_FILE
from megatron_fork.rl.run_stop import STOP_FILE, RunStoppedError, record_stop


def test_a_stopped_run_refuses_to_start_again_until_the_marker_goes(tmp_path):
    _start_lock(str(tmp_path)).release()  # no marker: the lock is taken
    error = DynamicSamplingExhausted("3 of 4 groups after 10 rounds: raise max_rounds")
    path = record_stop(tmp_path, error)
    assert path == tmp_path / STOP_FILE
    with pytest.raises(RunStoppedError) as refused:
        _start_lock(str(tmp_path))
    message = str(refused.value)
    assert "DynamicSamplingExhausted: 3 of 4 groups after 10 rounds" in message
    assert f"delete {path}" in message
    assert not (tmp_path / LOCK_FILE).exists()  # refused before taking the lock
    path.unlink()
    _start_lock(str(tmp_path)).release()
