"""Run untrusted code (HumanEval-style tests) in a sandboxed process; never in ours.

What a run gets (``judges.sandbox_init`` builds it; ``isolation()`` says which level this host has):

- ``userns`` (any user where the kernel allows user namespaces; root always): new user, mount,
  PID, network, IPC and UTS namespaces. The program runs as uid 1000 inside, mapped outside to our
  own uid, or, when we are root, to a fresh unprivileged uid per run; it has no capabilities.
- ``root`` (root where user namespaces are refused): the same namespaces without the user one, and
  a fresh unprivileged uid per run.
- ``none``: only limits, a new session and a scrubbed environment. Untrusted code is refused at
  this level unless the user accepts the risk (``judges.verifier.unsafe_code: true``).

In the first two the program sees a new root: the interpreter's directories, ``/usr``, ``/lib*``,
``/bin`` and ``/etc/ld.so.cache`` read-only; ``/dev/{null,zero,full,random,urandom}``; its own
size-limited tmpfs at ``/tmp``, ``/dev/shm`` and its working directory ``/work``; no ``/proc`` (so
no other process's environment or memory, and not its own), no repository, no home, no ``/etc``.
The network namespace has only a down loopback: TCP to the host, unix sockets to host paths and
abstract sockets all fail. The environment is ``PATH`` only. Its PID 1 is our init: when the
program exits, or the run times out and we kill the init, the kernel kills every process left in
the namespace, ``setsid()`` and double forks included. Per process: address space, CPU seconds,
file size and no core dumps; per run: the process count (``RLIMIT_NPROC`` is counted per user
namespace, or per uid, and each run has its own), so a fork bomb in one run cannot starve another.

A pass means the tests ran to the end: the program's exit status is not trusted. The harness
reads a random per-run token from a pipe (never in the program text, argv, environment or stdin),
and writes it to a second pipe only after the program returned normally; ``sys.exit(0)``,
``os._exit(0)``, killing itself, ``atexit`` tricks or closing stdout leave that pipe empty.

What remains possible, so nobody over-trusts it: the program runs in the harness's interpreter,
so in-process introspection that reaches the harness's closure forges a pass. The harness keeps
the token only in an audit hook's closure and ends the process on the known ways there (``gc``
referrer walks, tracing, ``ctypes``, hand-made code objects; ``/proc/self/mem`` is absent and the
process is not dumpable), but crafted bytecode through ``marshal`` or a CPython memory-safety bug
would still get there. And a program can pass tests it should fail without touching the harness:
a return value whose ``__eq__`` is always true, or text that rewrites the tests that follow it.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("sandbox_init.py"))  # run as a script, never imported here
MODES = ("userns", "root", "none")
WORKDIR = "/work"
# A fresh outside uid per run when we are root: far above real users, below the overflow ids.
RUN_UID_BASE, RUN_UID_SPAN = 1_500_000_000, 500_000_000


class SandboxUnavailable(RuntimeError):
    """No isolation could be had on this host, and running unisolated was not allowed."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_procs: int = 64
    python: str | None = None
    file_mb: int = 16
    tmpfs_mb: int = 64
    allow_unsafe: bool = False


@dataclass
class Outcome:
    passed: bool
    returncode: int | None
    timed_out: bool
    seconds: float
    isolation: str
    stderr_tail: str
    error: str = ""  # the sandbox could not be set up: the program did not run

    def summary(self) -> dict:
        out = {
            "passed": self.passed,
            "rc": self.returncode,
            "timeout": self.timed_out,
            "s": round(self.seconds, 3),
            "isolation": self.isolation,
            "stderr": self.stderr_tail,
        }
        if self.error:
            out["error"] = self.error
        return out


def _world_executable(path: str) -> bool:
    """Whether an unprivileged user can run ``path`` (every directory on the way searchable)."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(2, len(parts)):
        if not os.stat(os.sep.join(parts[:i])).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(real).st_mode & stat.S_IXOTH)


def interpreter(explicit: str | None, mode: str) -> str:
    """The python that runs the tests: the given one, else the base interpreter of ours (no venv).

    Without a private root, a root user's interpreter under ``/root`` is out of reach of the
    unprivileged uid; the system python serves then (HumanEval needs only the standard library).
    """
    if explicit:
        return os.path.realpath(explicit)
    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    if mode != "none" or os.geteuid() != 0 or _world_executable(python):
        return python
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _world_executable(candidate):
            return os.path.realpath(candidate)
    return python


def _binds(python: str) -> list[str]:
    """Host paths the interpreter needs: system library dirs and its own installation prefix."""
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache"]
    prefix = os.path.dirname(os.path.dirname(python))  # PREFIX/bin/python3.X
    if prefix not in ("/", "/usr") and not prefix.startswith("/usr/"):
        paths.append(prefix)
    return [p for p in paths if os.path.lexists(p)]


@lru_cache(maxsize=8)
def search_path(python: str) -> list[str] | None:
    """``sys.path`` as ``python -I`` builds it (the installation's site-packages and its .pth entries), asked
    once per interpreter; None if that interpreter cannot say.

    The harness starts with ``-S`` and is given this path: the site module's start-up runs every .pth file
    of the installation, which may import packages. On a host with one that imports certifi, a run took 96 ms
    of CPU with site and 59 ms without.
    """
    code = "import json, sys; print(); print(json.dumps(sys.path))"  # the last line: a .pth may print too
    try:
        out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin"}, check=True)
        path = json.loads(out.stdout.splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return path if isinstance(path, list) and all(isinstance(p, str) for p in path) else None


def _read_available(fd: int, limit: int = 4096) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, limit)
    except BlockingIOError:
        return b""


def _tail(f, size: int = 1000) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - size))
    return f.read().decode(errors="replace")


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """``proc.wait(timeout)`` without its polling: on POSIX that sleeps in steps growing to 50 ms, so a run's
    end can be seen up to 50 ms late. A pidfd becomes readable the moment the process exits (Linux 5.3+)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # another OS, an older kernel
        return proc.wait(timeout=timeout)
    try:
        poller = select.poll()  # not select.select, which fails on descriptors past 1023
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(source: str, limits: SandboxLimits, mode: str) -> Outcome:
    python = interpreter(limits.python, mode)
    host_root = os.geteuid() == 0
    run_uid = RUN_UID_BASE + secrets.randbelow(RUN_UID_SPAN)
    token = secrets.token_hex(16).encode()
    root_dir = tempfile.mkdtemp(prefix="sc-sandbox-")
    if mode == "none" and host_root:
        os.chown(root_dir, run_uid, run_uid)
    token_r, token_w = os.pipe()
    result_r, result_w = os.pipe()
    setup_r, setup_w = os.pipe()
    os.write(token_w, token)
    os.close(token_w)
    cfg = {
        "mode": mode,
        "python": python,
        "path": search_path(python),
        "binds": _binds(python),
        "root_dir": root_dir,
        "workdir": root_dir if mode == "none" else WORKDIR,
        "host_root": host_root,
        "outer_uid": run_uid if host_root else os.geteuid(),
        "outer_gid": run_uid if host_root else os.getegid(),
        "parent_pid": os.getpid(),
        "token_fd": token_r,
        "result_fd": result_w,
        "setup_fd": setup_w,
        "memory_mb": limits.memory_mb,
        "cpu_s": int(limits.timeout_s) + 1,
        "file_mb": limits.file_mb,
        "tmpfs_mb": limits.tmpfs_mb,
        "max_procs": limits.max_procs,
    }
    timed_out = False
    start = time.monotonic()
    try:
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stderr:
            stdin.write(source.encode())
            stdin.seek(0)
            try:
                proc = subprocess.Popen(
                    [python, "-I", "-S", LAUNCHER, json.dumps(cfg)],
                    stdin=stdin,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,  # a file: a chatty program cannot fill our memory (RLIMIT_FSIZE caps it)
                    env={"PATH": "/usr/bin:/bin"},
                    pass_fds=(token_r, result_w, setup_w),
                    start_new_session=True,
                )
            finally:
                for fd in (token_r, result_w, setup_w):
                    os.close(fd)
            try:
                rc = _wait(proc, limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _killpg(proc.pid)  # the init dies with its group, and the namespace with it
                rc = proc.wait()
            _killpg(proc.pid)  # without a PID namespace (mode none), what is left of the group
            seconds = time.monotonic() - start
            got = _read_available(result_r)
            setup_error = _read_available(setup_r).decode(errors="replace").strip()
            tail = _tail(stderr)
    finally:
        for fd in (result_r, setup_r):
            os.close(fd)
        shutil.rmtree(root_dir, ignore_errors=True)
    return Outcome(
        passed=not timed_out and not setup_error and hmac.compare_digest(got, token),
        returncode=rc,
        timed_out=timed_out,
        seconds=seconds,
        isolation=mode,
        stderr_tail=tail,
        error=setup_error,
    )


@lru_cache(maxsize=8)
def isolation(python: str | None = None) -> tuple[str, str]:
    """The best isolation that runs a trivial program on this host, and why better ones did not.

    Tried once per process (and interpreter): ``userns``, then ``root`` when we are root, else ``none``.
    """
    why = []
    for mode in MODES[:2]:
        if mode == "root" and os.geteuid() != 0:
            continue
        out = _run("pass\n", SandboxLimits(timeout_s=30, python=python), mode)
        if out.passed:
            return mode, ""
        why.append(f"{mode}: {out.error or out.stderr_tail.strip()[-200:] or f'exit status {out.returncode}'}")
    return "none", "; ".join(why)


def run_program(source: str, limits: SandboxLimits) -> Outcome:
    """Run ``source`` in the best sandbox this host has; passed means it ran to its end in time.

    Raises ``SandboxUnavailable`` when there is no isolation and ``limits.allow_unsafe`` is off.
    """
    mode, why = isolation(limits.python)
    if mode == "none" and not limits.allow_unsafe:
        raise SandboxUnavailable(
            f"no isolation for untrusted code on this host ({why}); "
            "set judges.verifier.unsafe_code=true to run it with only resource limits"
        )
    return _run(source, limits, mode)


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


def run_humaneval(prompt: str, completion: str, test: str, entry_point: str, limits: SandboxLimits) -> Outcome:
    """HumanEval's check: prompt + completion + test + ``check(entry_point)`` must run to its end."""
    program = f"{completion_code(prompt, completion, entry_point)}\n\n{test}\n\ncheck({entry_point})\n"
    return run_program(program, limits)
