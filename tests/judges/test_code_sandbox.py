"""The code sandbox against hostile programs: every escape below must fail.

Each attack is written so that it *passes* when it works; the sandbox must make it fail (or, for
writes, leave nothing outside). Programs go through ``run_program``/``run_humaneval`` exactly as
the verifier calls them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from judges.code_sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    _run,
    interpreter,
    isolation,
    run_humaneval,
    run_program,
    search_path,
)

REPO = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(timeout_s=4, memory_mb=256, max_procs=16)
MODE = isolation()[0]
pytestmark = pytest.mark.skipif(MODE == "none", reason=f"no sandbox isolation on this host: {isolation()[1]}")

# HumanEval-shaped: a stub, tests that a wrong body fails.
STUB = 'def add(a, b):\n    """Add two numbers."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def humaneval(completion: str, limits: SandboxLimits = LIMITS):
    return run_humaneval(STUB, completion, TEST, "add", limits)


def test_a_right_answer_passes_and_a_wrong_one_fails():
    right, wrong = humaneval("    return a + b\n"), humaneval("    return a - b\n")
    assert right.passed, right.stderr_tail
    assert not wrong.passed and "AssertionError" in wrong.stderr_tail
    assert right.isolation == MODE and not right.error


def test_the_program_starts_as_python_dash_i_would_without_running_site():
    """The harness starts with ``-S`` (site's start-up ran the installation's .pth files and took most of a
    run's time) and is given what site would have set: ``python -I``'s search path, and exit, quit, help."""
    python = interpreter(None, MODE)
    asked = subprocess.run([python, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"],
                           capture_output=True, text=True, check=True)
    expected = json.loads(asked.stdout.splitlines()[-1])  # the last line: a .pth file may print
    assert search_path(python) == expected
    program = (f"import sys\nassert sys.path == {expected!r}, sys.path\nassert sys.flags.no_site\n"
               "assert [type(f).__name__ for f in (exit, quit, help)] == ['Quitter', 'Quitter', '_Helper']\n"
               "import json, email.mime.text, sqlite3\n")
    out = run_program(program, LIMITS)
    assert out.passed, out.summary()
    assert search_path("/nonexistent/python") is None  # then the harness starts with site, as before


EARLY_EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)",
    "raise SystemExit": "raise SystemExit",
    "raise SystemExit(0)": "raise SystemExit(0)",
    "os._exit(0)": "import os\nos._exit(0)",
    "quit()": "quit()",
    "exit()": "exit()",
    "kill self SIGKILL": "import os\nos.kill(os.getpid(), 9)",
    "kill self SIGTERM": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
    "atexit os._exit(0)": "import atexit, os\natexit.register(lambda: os._exit(0))",
    "excepthook + atexit": "import atexit, os, sys\nsys.excepthook = lambda *a: None\natexit.register(os._exit, 0)",
    "close stdout/stderr then exit": "import os\nos.close(1)\nos.close(2)\nos._exit(0)",
    "exec /bin/true": "import os\nos.execv('/bin/true', ['true'])",
    "exit from a thread": "import os, threading\nthreading.Thread(target=os._exit, args=(0,)).start()\n"
    "import time\ntime.sleep(1)",
    "parent exits 0, child runs on": "import os\nif os.fork():\n    os._exit(0)",
    "forge the token": "import os\nos.write(4, b'0' * 32)\nos._exit(0)",
    "raise the finish event": "import sys\nsys.audit('selfcorrect.finished')",
    "patch the harness's _exit, then exit": "import sys\nsys._getframe(1).f_globals['_exit'] = lambda c: None\n"
    "raise SystemExit(0)",
    "gc walk for the token": "import gc, os\nfor o in gc.get_objects():\n"
    "    for c in getattr(o, '__closure__', None) or ():\n"
    "        v = c.cell_contents\n"
    "        if isinstance(v, bytes) and len(v) == 32:\n"
    "            os.write(4, v)\nos._exit(0)",
    "ctypes": "import ctypes\nctypes.CDLL(None).exit(0)",
    "trace and jump": "import sys\nsys.settrace(lambda *a: None)\nraise SystemExit(0)",
}


@pytest.mark.parametrize("name", list(EARLY_EXITS))
def test_exiting_early_does_not_pass(name):
    # A wrong body, then the trick, placed before the tests run.
    out = humaneval("    return a - b\n\n" + EARLY_EXITS[name] + "\n")
    assert not out.passed, (name, out.summary())
    assert not out.error


def _marked_processes(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in p.info["cmdline"] or ()):
            found.append(p)
    return found


def _daemon(marker: str) -> str:
    """A grandchild that leaves the session, forks again and ignores SIGTERM and SIGHUP."""
    sleeper = "import signal, time\nsignal.signal(15, signal.SIG_IGN)\nsignal.signal(1, signal.SIG_IGN)\n"
    sleeper += "while True:\n    time.sleep(1)\n"
    return textwrap.dedent(
        f"""\
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork():
                os._exit(0)
            os.execv(sys.executable, [sys.executable, "-c", {sleeper!r}, "{marker}"])
        """
    )


def test_a_setsid_double_forked_grandchild_dies_at_the_timeout():
    marker = f"sandbox-daemon-{uuid.uuid4().hex}"
    start = time.monotonic()
    out = run_program(_daemon(marker) + "import time\ntime.sleep(60)\n", LIMITS)
    wall = time.monotonic() - start
    assert out.timed_out and not out.passed
    assert LIMITS.timeout_s <= wall < LIMITS.timeout_s + 2
    time.sleep(0.3)
    assert _marked_processes(marker) == []


def test_a_setsid_double_forked_grandchild_dies_when_the_program_ends():
    marker = f"sandbox-daemon-{uuid.uuid4().hex}"
    out = run_program(_daemon(marker) + "import time\ntime.sleep(0.5)\n", LIMITS)
    assert out.passed and not out.timed_out, out.summary()
    time.sleep(0.3)
    assert _marked_processes(marker) == []


def test_writes_stay_inside(tmp_path):
    name = f"sandbox-write-{uuid.uuid4().hex}"
    places = ["/tmp", "/dev/shm", str(REPO), str(Path.home()), str(tmp_path), "/"]
    program = "import os\nwritten = []\n"
    for place in places:
        program += (
            f"try:\n    open(os.path.join({place!r}, {name!r}), 'w').write('x')\n"
            f"    written.append({place!r})\nexcept OSError:\n    pass\n"
        )
    # The private /tmp and /dev/shm are writable; nothing else is, and nothing shows outside.
    program += "assert set(written) <= {'/tmp', '/dev/shm'}, written\nassert len(written) == 2, written\n"
    out = run_program(program, LIMITS)
    assert out.passed, out.stderr_tail
    for place in places:
        assert not (Path(place) / name).exists(), place


def test_tmpfs_is_size_limited():
    out = run_program("open('/tmp/big', 'wb').write(b'x' * (100 << 20))\n", SandboxLimits(timeout_s=4, tmpfs_mb=32))
    assert not out.passed


@pytest.fixture
def secret_env(monkeypatch):
    secret = f"sk-sandbox-{uuid.uuid4().hex}"
    monkeypatch.setenv("SELFCORRECT_TEST_SECRET", secret)
    return secret


def test_reads_outside_fail(tmp_path, secret_env):
    planted = tmp_path / "secret.txt"
    planted.write_text(secret_env)
    planted.chmod(0o644)
    targets = [
        str(planted),
        "/etc/shadow",
        "/etc/passwd",
        "/proc/1/environ",
        f"/proc/{os.getpid()}/environ",
        "/proc/self/environ",
        f"{REPO}/pyproject.toml",
    ]
    for target in targets:
        out = run_program(f"print(open({target!r}, 'rb').read()[:10])\n", LIMITS)
        assert not out.passed, target
        assert secret_env not in out.stderr_tail
    view = "import os\nassert not os.path.exists('/proc') and not os.path.exists('/etc/hosts')\n"
    listing = run_program(view, LIMITS)
    assert listing.passed, listing.stderr_tail
    # LC_CTYPE is Python's own C-locale coercion (PEP 538), set at its start
    env = run_program("import os\nassert set(os.environ) <= {'PATH', 'LC_CTYPE'}, sorted(os.environ)\n", LIMITS)
    assert env.passed, env.stderr_tail


@pytest.fixture
def tcp_listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


@pytest.mark.parametrize("module", ["socket", "_socket"])
def test_no_tcp_to_the_host(tcp_listener, module):
    program = f"import {module} as s\nc = s.socket(s.AF_INET, s.SOCK_STREAM)\nc.settimeout(2)\n"
    program += f"c.connect(('127.0.0.1', {tcp_listener}))\n"
    assert not run_program(program, LIMITS).passed


def test_no_unix_sockets_to_the_host(tmp_path):
    path = tmp_path / "host.sock"
    abstract = f"\0sandbox-{uuid.uuid4().hex}"
    servers = []
    for address in (str(path), abstract):
        server = socket.socket(socket.AF_UNIX)
        server.bind(address)
        server.listen()
        servers.append(server)
    os.chmod(tmp_path, 0o755)
    path.chmod(0o777)
    try:
        for address in (str(path), abstract):
            program = f"import socket\nc = socket.socket(socket.AF_UNIX)\nc.connect({address!r})\n"
            assert not run_program(program, LIMITS).passed, address
    finally:
        for server in servers:
            server.close()


def test_a_fork_bomb_does_not_starve_a_concurrent_run():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    # the good run needs a few processes of its own while the bomb holds its whole allowance
    good = "import subprocess, sys\nfor _ in range(4):\n"
    good += "    subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
    results = {}

    def run(name, source, limits):
        results[name] = run_program(source, limits)

    bomber = threading.Thread(target=run, args=("bomb", bomb, SandboxLimits(timeout_s=8, max_procs=16)))
    bomber.start()
    time.sleep(1.0)
    run("good", good, SandboxLimits(timeout_s=30, max_procs=16))
    bomber.join()
    assert not results["bomb"].passed
    assert results["good"].passed, results["good"].summary()


def test_memory_hog_fails_and_spares_us():
    before = psutil.Process().memory_info().rss
    out = run_program("x = bytearray(2 << 30)\nx[::4096] = b'x' * len(x[::4096])\n", LIMITS)
    assert not out.passed and "MemoryError" in out.stderr_tail
    assert psutil.Process().memory_info().rss - before < 50 << 20


def test_an_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    out = run_program("while True:\n    pass\n", LIMITS)
    assert out.timed_out and not out.passed
    assert time.monotonic() - start < LIMITS.timeout_s + 2


@pytest.mark.skipif(os.geteuid() != 0, reason="the root-only isolation level needs root")
def test_the_root_level_holds_too(tcp_listener):
    """Where user namespaces are refused, root gets the same namespaces and a fresh uid per run."""
    limits = SandboxLimits(timeout_s=4, memory_mb=256, max_procs=16)
    marker = f"sandbox-daemon-{uuid.uuid4().hex}"
    attacks = {
        "early exit": "import sys\nsys.exit(0)\n",
        "tcp": f"import socket\nsocket.create_connection(('127.0.0.1', {tcp_listener}), timeout=2)\n",
        "read": f"open({str(REPO / 'pyproject.toml')!r}).read()\n",
        "daemon": _daemon(marker) + "import time\ntime.sleep(60)\n",
    }
    for name, program in attacks.items():
        out = _run(program + "\nassert False\n" if name == "early exit" else program, limits, "root")
        assert not out.passed and not out.error, (name, out.summary())
    assert _run("import os\nassert os.getuid() != 0\n", limits, "root").passed
    time.sleep(0.3)
    assert _marked_processes(marker) == []


NOBODY = """
import sys, types
pkg = types.ModuleType("judges")
pkg.__path__ = [sys.argv[1] + "/judges"]  # the module alone, without the package's pyarrow imports
sys.modules["judges"] = pkg
from judges.code_sandbox import SandboxLimits, SandboxUnavailable, isolation, run_program
mode, why = isolation()
print("MODE", mode, why)
limits = SandboxLimits(timeout_s=4, memory_mb=256)
try:
    attack = "import socket\\nsocket.create_connection(('127.0.0.1', %d), timeout=2)\\n" % int(sys.argv[2])
    tcp = run_program(attack, limits)
    good = run_program("assert 1 + 1 == 2\\n", limits)
except SandboxUnavailable as e:
    print("REFUSED", e)
else:
    print("RAN", tcp.passed, good.passed, tcp.isolation)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_an_unprivileged_user_gets_user_namespaces_or_a_refusal(tcp_listener):
    system_python = "/usr/bin/python3"
    if not os.path.exists(system_python):
        pytest.skip("no system python an unprivileged user can run")
    r = subprocess.run(
        [system_python, "-I", "-c", NOBODY, str(REPO), str(tcp_listener)],
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    if lines["MODE"].startswith("userns"):
        assert lines["RAN"] == "False True userns", r.stdout  # the TCP attack failed, a good run passed
    else:
        assert lines["MODE"].startswith("none") and "unsafe_code" in lines["REFUSED"], r.stdout


def test_no_isolation_means_refusal_unless_allowed(monkeypatch):
    import judges.code_sandbox as cs

    monkeypatch.setattr(cs, "isolation", lambda python=None: ("none", "userns: refused by the test"))
    with pytest.raises(SandboxUnavailable, match="unsafe_code"):
        cs.run_program("pass\n", LIMITS)
    out = cs.run_program("pass\n", SandboxLimits(timeout_s=10, allow_unsafe=True))
    assert out.passed and out.isolation == "none"


def test_the_verifier_flags_code_rows_without_isolation_and_says_so_once(monkeypatch, caplog):
    import json

    import judges.verifier as verifier
    from judges.base import build
    from judges.config import judge_settings

    meta = json.dumps({"code_prompt": STUB, "test": TEST, "entry_point": "add"})
    rows = [
        {"prompt_id": f"p{i}", "task": "code", "attempt1": "    return a + b\n", "metadata": meta} for i in range(3)
    ]
    caplog.set_level("INFO", logger="judges.verifier")
    judge = build("verifier", judge_settings("verifier", {"code_timeout_s": 5}))
    assert [r.score1 for r in judge.judge(rows)] == [1.0] * 3
    assert [r.getMessage() for r in caplog.records].count(
        f"judge verifier: generated code runs sandboxed ({MODE} namespaces)"
    ) == 1
    assert json.loads(judge.judge(rows[:1])[0].raw)["attempt1"]["isolation"] == MODE

    monkeypatch.setattr(verifier, "isolation", lambda python=None: ("none", "userns: refused by the test"))
    refused = build("verifier", judge_settings("verifier", {"code_timeout_s": 5}))
    results = refused.judge(rows)
    assert all(r.score1 is None and "unsafe_code" in r.error for r in results)
    assert sum("code not run" in r.getMessage() for r in caplog.records) == 1
    allowed = build("verifier", judge_settings("verifier", {"code_timeout_s": 5, "unsafe_code": True}))
    assert [r.score1 for r in allowed.judge(rows)] == [1.0] * 3
