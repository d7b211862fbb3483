"""A real S3-compatible server on loopback: moto's standalone server, in a process of its own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vllm_server import free_port

if TYPE_CHECKING:
    import pyarrow.fs

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


def s3_filesystem(url: str) -> pyarrow.fs.S3FileSystem:
    """A client of the server at ``url`` for the test's own reads, apart from the code under test's."""
    import pyarrow.fs as pafs

    env = s3_env(url)
    return pafs.S3FileSystem(
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env["AWS_REGION"],
        endpoint_override=url.removeprefix("http://"),
        scheme="http",
        allow_bucket_creation=True,
    )


def registered_checkpoint(fs: pyarrow.fs.FileSystem, experiment: str) -> dict[str, Any] | None:
    """The metrics of the latest checkpoint Ray Train has registered for its experiment folder ``experiment``
    (``bucket/key``); None before the first. Its controller writes the snapshot read here when it registers
    one, seconds after the worker uploaded it: a restart before that resumes from the checkpoint before."""
    try:
        with fs.open_input_stream(f"{experiment}/checkpoint_manager_snapshot.json") as f:
            latest = json.loads(f.read())["latest_checkpoint_result"]
    except (OSError, ValueError):
        return None
    return latest["metrics"] if latest else None


@contextlib.contextmanager
def serve_s3(log: Path) -> Iterator[str]:
    """Start ``moto_server`` on a free port with the bucket ``BUCKET``; yield its URL; stop it."""
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
        s3_filesystem(f"http://127.0.0.1:{port}").create_dir(BUCKET)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
