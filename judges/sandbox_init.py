"""The trusted launcher of a sandboxed run: ``python -I -S sandbox_init.py CONFIG_JSON``.

``judges.code_sandbox`` starts this file as a script (standard library only, so it runs under any
interpreter). It builds the sandbox and starts the untrusted interpreter in it:

    launcher (our uid)          writes the child's uid/gid maps, waits, passes on the exit status
      └─ contain                unshare(user, mount, pid, net, ipc, uts); private root; drops the uid
           └─ init (PID 1)      reaps orphans; when it returns, the kernel kills the whole namespace
                └─ python -I -S -c HARNESS   limits set, no new privileges; reads the program on stdin

A step the kernel refuses writes why to the setup pipe (``cfg["setup_fd"]``) and exits with
``SETUP_FAILED``. The program never holds that pipe (it is close-on-exec in the last step), so a
host without the isolation is told apart from a failing program, and no program can fake it.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import signal
import sys

SETUP_FAILED = 125
INSIDE_ID = 1000  # the uid/gid the program has inside a user namespace (never 0: no capabilities)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH, AT_FDCWD, AT_RECURSIVE = 2, -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added after the syscall tables were unified)
DEVICES = ("null", "zero", "full", "random", "urandom")
# statvfs flag -> mount flag, to repeat the flags a remount inside a user namespace may not drop
STATVFS_TO_MS = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}

# Runs first in the untrusted interpreter. It takes the run's token from fd 3 (closing it), keeps
# it only in the closure of an audit hook, and hands it out on fd 4 only when the module frame
# below asks after the program returned normally: an early exit, a kill or an exception leaves
# fd 4 empty. The hook also ends the process on the usual ways of reading the closure (gc,
# tracing, ctypes, hand-made code objects); see judges.code_sandbox for what is left.
HARNESS = """\
import os, sys
def _arm():
    import ctypes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace or /proc/PID/mem from other processes
    token = os.read(3, 64)
    os.close(3)
    write, exit_, getframe, me = os.write, os._exit, sys._getframe, sys._getframe(1)
    blocked = frozenset(("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace",
                         "sys.setprofile", "code.__new__", "sys._current_frames"))
    def hook(event, args):
        if event == "selfcorrect.finished":
            if getframe(1) is me:
                write(4, token)
                exit_(0)
            exit_(1)
        if event in blocked or event.startswith("ctypes."):
            write(2, b"sandbox: blocked " + event.encode() + b"\\n")
            exit_(1)
    sys.addaudithook(hook)
    for name in [m for m in sys.modules if m.startswith(("ctypes", "_ctypes"))]:
        del sys.modules[name]
_arm()
del _arm
_audit, _exit = sys.audit, os._exit
try:
    exec(compile(sys.stdin.read(), "<program>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except BaseException as _e:  # SystemExit included; the else below is then never reached
    import traceback
    traceback.print_exception(_e)
    _exit(1)
else:
    _audit("selfcorrect.finished")
_exit(1)
"""


def site_prelude(path: list[str]) -> str:
    """What the site module gives a program, for an interpreter started without it (``-S``): the search
    path ``python -I`` has (``judges.code_sandbox.search_path``), and ``exit``, ``quit`` and ``help``."""
    return (
        "import sys, builtins, _sitebuiltins\n"
        f"sys.path[:] = {path!r}\n"
        "builtins.exit = _sitebuiltins.Quitter('exit', 'Ctrl-D (i.e. EOF)')\n"
        "builtins.quit = _sitebuiltins.Quitter('quit', 'Ctrl-D (i.e. EOF)')\n"
        "builtins.help = _sitebuiltins._Helper()\n"
        "del builtins, _sitebuiltins\n"
    )


class SetupError(Exception):
    pass


def _fail(cfg: dict, e: BaseException) -> int:
    message = f"{type(e).__name__}: {e}" if not isinstance(e, SetupError) else str(e)
    try:
        os.write(cfg["setup_fd"], message.encode()[:1000] + b"\n")
    except OSError:
        pass
    return SETUP_FAILED


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


LIBC = _libc()


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(LIBC.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {source} on {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]


def _read_only(path: str) -> None:
    """Make the mount at ``path`` and every mount below it read-only, nosuid, nodev."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    ret = LIBC.syscall(
        SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    if ret == 0:
        return
    # Kernels before 5.12: remount the top mount only, repeating the flags the kernel locks.
    flags = os.statvfs(path).f_flag
    keep = sum(ms for st, ms in STATVFS_TO_MS.items() if flags & st)
    _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


def _tmpfs(target: str, size_mb: int, mode: str) -> None:
    os.makedirs(target, exist_ok=True)
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,nr_inodes=4096,mode={mode}")


def _private_root(cfg: dict) -> None:
    """Mount a new root holding only ``cfg["binds"]`` (read-only), a few devices and three tmpfs."""
    root = cfg["root_dir"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
    for path in cfg["binds"]:
        target = root + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(path):  # /lib -> usr/lib on merged-/usr systems
            os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            open(target, "w").close()
        _mount(path, target, None, MS_BIND | MS_REC)
        _read_only(target)
    os.makedirs(root + "/dev", exist_ok=True)
    for dev in DEVICES:
        open(f"{root}/dev/{dev}", "w").close()
        _mount(f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND)
    for place in ("/tmp", "/dev/shm", cfg["workdir"]):
        _tmpfs(root + place, cfg["tmpfs_mb"], "1777")
    os.chdir(root)
    if SYS_PIVOT_ROOT is None:
        os.chroot(".")  # unknown architecture: the program has no capability to leave a chroot
    else:
        # The runc idiom: the old root ends up stacked on the new one, and is then detached.
        _check(LIBC.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
        _check(LIBC.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _write_maps(pid: int, cfg: dict) -> None:
    """Map the program's uid/gid inside to an outside one (ours; a fresh one per run when root).

    As root we also map root to root, so that the setup (still root) can reach a root-only
    interpreter and own what it creates; the program's uid change drops every capability.
    """
    uid, gid = cfg["outer_uid"], cfg["outer_gid"]
    if cfg["host_root"]:
        uid_map, gid_map = f"0 0 1\n{INSIDE_ID} {uid} 1", f"0 0 1\n{INSIDE_ID} {gid} 1"
    else:
        uid_map, gid_map = f"{INSIDE_ID} {uid} 1", f"{INSIDE_ID} {gid} 1"
        with open(f"/proc/{pid}/setgroups", "w") as f:  # required before an unprivileged gid_map
            f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(uid_map)
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(gid_map)


def _become(cfg: dict) -> None:
    """Take the program's uid: INSIDE_ID in a user namespace, else (as root) a fresh outside uid."""
    mode = cfg["mode"]
    if cfg["host_root"]:  # only an unprivileged gid map forbids setgroups
        os.setgroups([])
    elif mode == "none":
        return
    uid = gid = INSIDE_ID if mode == "userns" else cfg["outer_uid"]
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _exec_program(cfg: dict) -> None:
    """In the program's process: fds 0-4 only, limits, no new privileges, then the harness."""
    token = fcntl.fcntl(cfg["token_fd"], fcntl.F_DUPFD, 10)
    result = fcntl.fcntl(cfg["result_fd"], fcntl.F_DUPFD, 10)
    setup = cfg["setup_fd"] = fcntl.fcntl(cfg["setup_fd"], fcntl.F_DUPFD_CLOEXEC, 10)
    os.dup2(token, 3)
    os.dup2(result, 4)
    os.closerange(5, setup)
    os.closerange(setup + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    mem = cfg["memory_mb"] << 20
    for limit, value in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_CPU, cfg["cpu_s"]),
        (resource.RLIMIT_FSIZE, cfg["file_mb"] << 20),
        (resource.RLIMIT_CORE, 0),
        # the sandbox's own contain and init processes count against it too
        (resource.RLIMIT_NPROC, cfg["max_procs"] + 2),
        (resource.RLIMIT_NOFILE, 256),
    ):
        resource.setrlimit(limit, (value, value))
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.chdir(cfg["workdir"])
    python, path = cfg["python"], cfg["path"]
    if path is None:  # the interpreter could not tell its path: its site module builds it
        argv = [python, "-I", "-c", HARNESS]
    else:
        argv = [python, "-I", "-S", "-c", site_prelude(path) + HARNESS]
    os.execve(python, argv, {"PATH": "/usr/bin:/bin"})


def _init(cfg: dict) -> int:
    """PID 1 of the namespace: start the program, reap orphans, return with the program."""
    _check(LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    child = os.fork()
    if child == 0:
        try:
            _exec_program(cfg)
        except BaseException as e:  # noqa: BLE001 - anything here is a setup failure
            os._exit(_fail(cfg, e))
    while True:
        pid, status = os.wait()
        if pid == child:
            return _exit_code(status)


def _contain(cfg: dict, ready_w: int, go_r: int) -> int:
    mode = cfg["mode"]
    if mode != "none":
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
        _check(LIBC.unshare(flags | (CLONE_NEWUSER if mode == "userns" else 0)), "unshare")
    os.write(ready_w, b"1")
    os.close(ready_w)
    if os.read(go_r, 1) != b"1":
        raise SetupError("the launcher gave up")
    os.close(go_r)
    if mode != "none":
        _private_root(cfg)
    _become(cfg)
    _check(LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")  # after the uid change
    init = os.fork()
    if init == 0:
        try:
            code = _init(cfg)
        except BaseException as e:  # noqa: BLE001
            code = _fail(cfg, e)
        os._exit(code)
    return _exit_code(os.waitpid(init, 0)[1])


def launch(cfg: dict) -> int:
    os.umask(0o022)  # the new root's directories must be searchable by the program's uid
    _check(LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    if os.getppid() != cfg["parent_pid"]:
        return _fail(cfg, SetupError("the judge process is gone"))
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        try:
            code = _contain(cfg, ready_w, go_r)
        except BaseException as e:  # noqa: BLE001
            code = _fail(cfg, e)
        os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise SetupError("the sandbox did not start")
        if cfg["mode"] == "userns":
            _write_maps(pid, cfg)
        os.write(go_w, b"1")
    except (OSError, SetupError) as e:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return _fail(cfg, e)
    finally:
        os.close(go_w)
    return _exit_code(os.waitpid(pid, 0)[1])


if __name__ == "__main__":
    sys.exit(launch(json.loads(sys.argv[1])))
