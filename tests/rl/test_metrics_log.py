"""The metrics log: cut back to the checkpoint's step on resume, fresh when the run restarts
before its first checkpoint, torn last lines ignored."""

from megatron_fork.rl.metrics_log import MetricsLog, read_metrics


def _log_steps(tmp_path, steps, resume_step):
    log = MetricsLog(tmp_path, tensorboard=False, resume_step=resume_step)
    for step in steps:
        log.log(step, {"x": float(step), "nan": float("nan")})
    log.close()
    return read_metrics(tmp_path / "metrics.jsonl")


def test_resume_cuts_back_to_the_checkpoint_and_restart_starts_fresh(tmp_path):
    _log_steps(tmp_path, [0, 1, 2, 3], resume_step=-1)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "x": ')  # torn by a kill mid-write
    resumed = _log_steps(tmp_path, [3, 4], resume_step=2)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]
    assert resumed[0]["nan"] is None  # JSON has no NaN: written as null
    restarted = _log_steps(tmp_path, [0], resume_step=-1)
    assert [r["step"] for r in restarted] == [0]
