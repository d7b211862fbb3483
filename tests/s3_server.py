"""A real S3-compatible server on loopback: moto's standalone server, in a process of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from vllm_server import free_port

BUCKET = "runs"


def s3_env(url: str) -> dict[str, str]:
    """What a user sets for an S3-compatible server: credentials and the endpoint, from the environment."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": url,
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance to ask: fail fast instead of timing out
    }


@contextlib.contextmanager
def serve_s3(log: Path) -> Iterator[str]:
    """Start ``moto_server`` on a free port with the bucket ``BUCKET``; yield its URL; stop it."""
    import pyarrow.fs as pafs

    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"moto_server exited: {log.read_text()[-2000:]}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
        env = s3_env(f"http://127.0.0.1:{port}")
        fs = pafs.S3FileSystem(
            access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env["AWS_SECRET_ACCESS_KEY"],
            region="us-east-1",
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
