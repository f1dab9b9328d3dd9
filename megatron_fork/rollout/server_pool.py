"""Rollout server processes: started, waited for, restarted, stopped.

A server is a command that prints ``serving on http://HOST:PORT`` once it listens (the CPU
server does; for sglang the port is chosen up front and the line is not needed): the pool reads
the URL, waits for ``/health_generate``, and restarts a server that died with the same command.
Servers are bound to loopback unless their command says otherwise.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from megatron_fork.rollout.http_client import ServerClient, ServerError

_READY = re.compile(r"serving on (http://\S+)")


@dataclass
class ServerProcess:
    command: list[str]
    preset_url: str | None = None
    """Known up front (sglang's ``--host``/``--port``); else read from the ready line."""
    process: subprocess.Popen | None = None
    url: str | None = None
    log: list[str] = field(default_factory=list)
    """The last lines the server printed (for error messages)."""


def cpu_server_command(model_path: str, **options) -> list[str]:
    """The CPU server's command line; ``options`` become ``--key value`` flags."""
    command = [sys.executable, "-m", "megatron_fork.rollout.server", "--model-path", model_path]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the launching process dies, so a killed
    trainer leaves no orphaned servers."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerPool:
    def __init__(
        self,
        commands: Sequence[list[str]],
        startup_timeout_s: float = 300.0,
        urls: Sequence[str | None] | None = None,
        client=ServerClient,
    ):
        """``urls``: each server's URL when its command fixes it (sglang), else None.
        ``client``: the client class of what the servers speak (``ServerClient`` for sglang,
        ``vllm_client.VllmClient``), whose ``healthy`` tells a started server ready."""
        self.client = client
        urls = list(urls) if urls is not None else [None] * len(commands)
        self.servers = [ServerProcess(list(c), u) for c, u in zip(commands, urls, strict=True)]
        self.startup_timeout_s = startup_timeout_s
        try:
            for index in range(len(self.servers)):
                self._launch(index)
            for index in range(len(self.servers)):
                self._wait_ready(index)
        except BaseException:
            self.close()  # none left running when one fails to start
            raise

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def alive(self, index: int) -> bool:
        process = self.servers[index].process
        return process is not None and process.poll() is None

    def restart(self, index: int) -> str:
        """Stop server ``index`` if it still runs, start it again; its (new) URL."""
        self.stop(index)
        self._launch(index)
        self._wait_ready(index)
        return self.servers[index].url

    def close(self) -> None:
        for index in range(len(self.servers)):
            self.stop(index)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def _launch(self, index: int) -> None:
        server = self.servers[index]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        server.process = subprocess.Popen(
            server.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        server.url, server.log = server.preset_url, []
        threading.Thread(target=self._read_output, args=(server,), daemon=True).start()

    @staticmethod
    def _read_output(server: ServerProcess) -> None:
        """Keep the last lines and catch the ready line; drains the pipe so it never fills."""
        for line in server.process.stdout:
            server.log = (server.log + [line.rstrip()])[-40:]
            match = _READY.search(line)
            if match and server.preset_url is None:
                server.url = match.group(1)

    def _wait_ready(self, index: int) -> None:
        server, deadline = self.servers[index], time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.alive(index):
                raise RuntimeError(
                    f"rollout server {index} exited with {server.process.returncode} while "
                    "starting:\n" + "\n".join(server.log[-20:])
                )
            if server.url and self.client(server.url).healthy(timeout_s=10.0):
                return
            time.sleep(0.1)
        self.stop(index)
        raise TimeoutError(f"rollout server {index} not healthy in {self.startup_timeout_s} s")

    def stop(self, index: int) -> None:
        """Server ``index`` ended (terminated, killed after 10 s) if it still runs; its GPU
        memory with it. ``restart`` starts it again."""
        process = self.servers[index].process
        if process is not None and process.poll() is None:
            process.terminate()
            process.send_signal(signal.SIGCONT)  # a stopped process takes its SIGTERM now
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_healthy(
    urls: Sequence[str],
    timeout_s: float,
    api_key: str | None = None,
    poll_s: float = 2.0,
    client=ServerClient,
) -> None:
    """Block until every server at ``urls`` answers ``/health_generate``: engines started
    beside the trainer (sglang on a Slurm node group) load for minutes, and the first weight
    sync must not race them. A server that is up (``/model_info`` answers) but cannot generate
    may have been left paused by a trainer that died mid-sync (sglang's health probe waits on
    the pause): it is resumed; the first sync replaces its weights before anything is
    generated. TimeoutError names the servers that never answered. ``client``: as
    ``ServerPool``'s (a vLLM engine's ``/health`` answers while paused or asleep: it is
    woken)."""
    waiting = list(urls)
    deadline = time.monotonic() + timeout_s
    while waiting:
        waiting = [u for u in waiting if not _ready(client(u, api_key=api_key), poll_s)]
        if waiting and time.monotonic() >= deadline:
            raise TimeoutError(
                f"rollout servers not healthy after {timeout_s:.0f} s: {', '.join(waiting)} "
                "(their logs say why; raise rollout.engine_startup_timeout_s if still loading)"
            )
        if waiting:
            time.sleep(poll_s)


def _ready(client: ServerClient, timeout_s: float) -> bool:
    """Healthy now (a vLLM engine left asleep by a killed colocated trainer is woken, all of
    it: ``/is_sleeping``, then ``/wake_up``; sglang reports no release, ``reports_release``:
    the loop wakes it from its record, ``released_memory.py``); else resumed when it is up
    but paused (checked again at the next poll)."""
    if client.healthy(timeout_s):
        if client.reports_release and client.released():
            client.wake_up()
        return True
    if client.answers(timeout_s):
        try:
            client.resume()
        except ServerError:
            pass  # still starting: the next poll asks again
    return False
