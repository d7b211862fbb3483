"""Run untrusted code (HumanEval-style tests) in a separate, limited process; never in ours.

The child is a fresh ``python -I`` reading the program from stdin, in its own session (process
group) and an empty temporary directory, with an environment of nothing but ``PATH`` (no API keys).
Before it starts it gets: a private network namespace (no interfaces but a down loopback) where
the kernel allows it, else a prelude that makes socket creation fail; limits on address space,
CPU time, file size and processes. When we run as root the child also drops to an unprivileged
uid, because the kernel ignores the process limit for root. On timeout the whole process group
is killed, so a forked or backgrounded grandchild does not outlive the run.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache

CLONE_NEWNET = 0x40000000
NOBODY = 65534

# Runs first in the child when no network namespace could be made: no new sockets.
NO_SOCKET_PRELUDE = """\
import socket as _s
def _no_network(*a, **k):
    raise OSError("network access is disabled in the sandbox")
_s.socket = _s.create_connection = _s.socketpair = _s.create_server = _no_network
del _s
"""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_procs: int = 64
    python: str | None = None


@dataclass
class Outcome:
    passed: bool
    returncode: int | None
    timed_out: bool
    seconds: float
    isolation: str
    stderr_tail: str

    def summary(self) -> dict:
        return {
            "passed": self.passed,
            "rc": self.returncode,
            "timeout": self.timed_out,
            "s": round(self.seconds, 3),
            "isolation": self.isolation,
            "stderr": self.stderr_tail,
        }


def _world_executable(path: str) -> bool:
    """Whether an unprivileged user can run ``path`` (every directory on the way searchable)."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:i])).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(real).st_mode & stat.S_IXOTH)


def _interpreter(explicit: str | None, drop_uid: bool) -> str:
    if explicit:
        return explicit
    if not drop_uid or _world_executable(sys.executable):
        return sys.executable
    # HumanEval tests need only the standard library; the system python serves the nobody user.
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _world_executable(candidate):
            return candidate
    return sys.executable


def _unshare_net() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(CLONE_NEWNET) == 0


@lru_cache(maxsize=1)
def network_namespace_works() -> bool:
    """Probe once whether a child can get its own network namespace (root, or user namespaces)."""
    try:
        r = subprocess.run(
            [sys.executable, "-I", "-c", "pass"],
            preexec_fn=lambda: _unshare_net() or os._exit(3),
            capture_output=True,
            timeout=30,
        )
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _child_setup(limits: SandboxLimits, netns: bool, drop_uid: bool, workdir: str):
    def setup() -> None:  # runs in the child between fork and exec
        if netns and not _unshare_net():
            os._exit(97)
        mem = limits.memory_mb * 1024 * 1024
        cpu = int(limits.timeout_s) + 2
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs, limits.max_procs))
        if drop_uid:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        os.chdir(workdir)

    return setup


def run_program(source: str, limits: SandboxLimits) -> Outcome:
    """Run ``source`` in the sandbox; passed means exit status 0 within the time limit."""
    drop_uid = os.geteuid() == 0
    netns = network_namespace_works()
    program = source if netns else NO_SOCKET_PRELUDE + source
    workdir = tempfile.mkdtemp(prefix="sc-sandbox-")
    if drop_uid:
        os.chown(workdir, NOBODY, NOBODY)
    cmd = [_interpreter(limits.python, drop_uid), "-I", "-"]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
        start_new_session=True,
        preexec_fn=_child_setup(limits, netns, drop_uid, workdir),
    )
    timed_out = False
    try:
        _, err = proc.communicate(program.encode(), timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _killpg(proc.pid)
        _, err = proc.communicate()
    finally:
        _killpg(proc.pid)  # grandchildren left in the group die with the run
        shutil.rmtree(workdir, ignore_errors=True)
    isolation = ("netns" if netns else "no-socket") + ("+nobody" if drop_uid else "")
    tail = (err or b"").decode(errors="replace")[-500:]
    return Outcome(
        passed=not timed_out and proc.returncode == 0,
        returncode=proc.returncode,
        timed_out=timed_out,
        seconds=time.monotonic() - start,
        isolation=isolation,
        stderr_tail=tail,
    )


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def completion_code(prompt: str, completion: str, entry_point: str) -> str:
    """The program text for a response: a whole function from a fenced block, or a continuation.

    Chat models usually answer with the full function in a Markdown block; base models continue
    the prompt. The prompt is kept in front either way, for its imports and helper functions.
    """
    blocks = _FENCE.findall(completion)
    code = next((b for b in reversed(blocks) if f"def {entry_point}" in b), blocks[-1] if blocks else None)
    if code is not None:
        return f"{prompt}\n    pass\n\n{code}" if f"def {entry_point}" in code else prompt + code
    if f"def {entry_point}" in completion:
        return f"{prompt}\n    pass\n\n{completion}"
    return prompt + completion


def run_humaneval(
    prompt: str, completion: str, test: str, entry_point: str, limits: SandboxLimits
) -> Outcome:
    """HumanEval's check: prompt + completion + test + ``check(entry_point)`` must exit 0."""
    program = f"{completion_code(prompt, completion, entry_point)}\n\n{test}\n\ncheck({entry_point})\n"
    return run_program(program, limits)
