"""``python -m megatron_fork.rollout.server --model-path DIR [--port 0] [--load-format dummy]
[--protocol sglang|vllm]``

Serves a Hugging Face Qwen3 folder with the torch engine behind sglang's HTTP protocol, or
vLLM's (``--protocol vllm``: its routes, bodies and status codes, the version starting at
"default", log-probs as ``--logprobs-mode processed_logprobs``), bound to loopback unless
``--host`` says otherwise. Prints ``serving on http://HOST:PORT`` once
ready (with ``--port 0`` the port is a free one; launchers read it from that line).
"""

import argparse
import os

import torch

from megatron_fork.rollout.server.engine_server import EngineServer
from megatron_fork.rollout.server.http_app import make_http_server
from megatron_fork.rollout.server.vllm_routes import VllmServer, vllm_error
from megatron_fork.rollout.torch_engine import TorchRolloutEngine


def _model(path: str, dummy: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    if dummy:  # weights arrive by a weight update (sglang's --load-format dummy)
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False)


def _eos_token_id(config) -> int | None:
    """The model's EOS (the first of a list), where vLLM stops with ``stop_reason`` None."""
    eos = getattr(config, "eos_token_id", None)
    return eos[0] if isinstance(eos, list) and eos else eos if isinstance(eos, int) else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="megatron_fork.rollout.server", description=__doc__)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--load-format", choices=("auto", "dummy"), default="auto")
    parser.add_argument("--weight-version", type=int, default=0)
    parser.add_argument("--quantization", choices=("fp8",), default=None)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--pad-token-id", type=int, default=0)
    parser.add_argument("--random-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    parser.add_argument("--protocol", choices=("sglang", "vllm"), default="sglang")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = _model(args.model_path, args.load_format == "dummy")
    engine = TorchRolloutEngine(
        model,
        args.max_batch_size,
        args.pad_token_id,
        args.random_seed,
        processed_logprobs=args.protocol == "vllm",
    )
    engine.update_weights((), version=args.weight_version)
    health_timeout_s = float(os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT", 20))  # as sglang
    server = EngineServer(engine, args.model_path, args.quantization == "fp8", health_timeout_s)
    if args.protocol == "vllm":
        vllm = VllmServer(server, _eos_token_id(model.config))
        httpd = make_http_server(server, args.host, args.port, vllm.routes(), vllm_error)
    else:
        httpd = make_http_server(server, args.host, args.port)
    host, port = httpd.server_address[:2]
    print(f"serving on http://{host}:{port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
