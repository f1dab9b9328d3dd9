"""The kit's vLLM check without a GPU: it is registered and skipped with its reason where vLLM or
a GPU is missing; its engine is the Slurm task's (moved to loopback); its model folder holds
what vLLM reads without weights; its readiness wait sees a real HTTP server's /health and an
engine that died. The check itself runs only on a GPU machine with VLLM_PYTHON."""

import http.server
import subprocess
import sys
import threading
import time

import pytest

from tools.gpu_checks import registry, vllm_check
from tools.gpu_checks.core import CheckFailed, Needs
from tools.gpu_checks.machine import Machine, _imports, skip_reason


def test_the_check_is_registered_and_skipped_with_the_reason():
    (check,) = [c for c in registry.all_checks() if c.name == "vllm_engine"]
    assert check.needs == Needs(gpus=1, vllm=True) and check.subset == registry.NODE
    assert check.target == "tools.gpu_checks.vllm_check:check"
    gpu_no_vllm = Machine(gpus=8, transformer_engine=True, sglang_python="/x", vllm_python=None)
    reason = skip_reason(check.needs, gpu_no_vllm)
    assert reason.startswith("needs vLLM (not importable by") and "set VLLM_PYTHON" in reason
    no_gpu = Machine(0, False, None, "/opt/vllm/bin/python")
    assert skip_reason(check.needs, no_gpu) == "needs CUDA (no CUDA device)"
    assert skip_reason(check.needs, Machine(1, False, None, "/opt/vllm/bin/python")) is None
    assert _imports(sys.executable, "json") and not _imports(sys.executable, "vllm_not_here")


def test_the_kit_engine_is_the_slurm_tasks_on_loopback(tmp_path):
    environ = {"VLLM_PYTHON": "/opt/vllm/bin/python", "CUDA_VISIBLE_DEVICES": "3,4"}
    environ["VLLM_NCCL_SO_PATH"] = "/usr/local/lib/megatron-fork/libnccl.so.2"
    command, env = vllm_check.vllm_launch(tmp_path, 41234, environ)
    assert command[:5] == [
        "/opt/vllm/bin/python", "-m", "vllm.entrypoints.cli.main", "serve", str(tmp_path)
    ]  # fmt: skip
    flag = {command[i]: command[i + 1] for i in range(5, len(command) - 1)}
    assert flag["--host"] == "127.0.0.1" and flag["--port"] == "41234"
    assert flag["--max-model-len"] == "4096" and flag["--load-format"] == "dummy"
    assert flag["--tensor-parallel-size"] == "1" and "--enable-scale-out" in command
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["VLLM_SERVER_DEV_MODE"] == "1"
    assert env["VLLM_NCCL_SO_PATH"] == environ["VLLM_NCCL_SO_PATH"]


def test_the_model_folder_holds_config_and_tokenizer_only(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    folder = vllm_check.write_model_folder(tmp_path / "model")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not [n for n in names if n.endswith((".safetensors", ".bin", ".pt"))]
    config = AutoConfig.from_pretrained(folder)  # what vLLM reads, through transformers
    assert config.model_type == "qwen3" and config.num_hidden_layers == 2
    assert config.max_position_embeddings == vllm_check.MAX_MODEL_LEN
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token_id == config.eos_token_id == 1


class _Health(http.server.BaseHTTPRequestHandler):
    ready_at = 0.0

    def do_GET(self):
        ok = self.path == "/health" and time.monotonic() >= self.ready_at
        self.send_response(200 if ok else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_wait_ends_at_the_first_200_of_health():
    _Health.ready_at = time.monotonic() + 0.5  # 503 while "loading"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        seconds = vllm_check.wait_for_health(url, None, None, time.monotonic() + 20, poll_s=0.1)
        assert 0.3 < seconds < 10
    finally:
        server.shutdown()


def test_an_engine_that_dies_fails_the_wait_with_its_error(tmp_path):
    log = tmp_path / "engine.log"
    log.write_text("INFO loading\nValueError: Unsupported activation scheme x\n")
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(CheckFailed, match=r"engine exited \(3\): ValueError: Unsupported"):
        vllm_check.wait_for_health("http://127.0.0.1:9", dead, log, time.monotonic() + 20)
