"""Wall time and peak memory of a command's whole process tree (driver, Ray, actors, engines)."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    seconds: float
    peak_pss_bytes: int | None
    returncode: int
    stderr: str

    @property
    def peak_pss_gib(self) -> float | None:
        return None if self.peak_pss_bytes is None else self.peak_pss_bytes / 2**30


def _pss(pid: int) -> int:
    # smaps_rollup is summed by the kernel; psutil's memory_full_info parses all of smaps, which
    # for a torch process (thousands of mappings) costs enough CPU to slow what is being measured.
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_pss(pid: int) -> int:
    """Summed PSS of ``pid`` and its descendants: shared pages (model weights) count once."""
    import psutil

    try:
        root = psutil.Process(pid)
        pids = [pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in pids:
        try:
            total += _pss(p)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def run_measured(cmd: list[str], interval: float | None = 0.5) -> Measured:
    """Run ``cmd`` from the repo root, sampling the tree's PSS every ``interval`` s (None: time only)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak: int | None = None
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak or 0, tree_pss(proc.pid))
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    if interval is not None:
        sampler.start()
    _, err = proc.communicate()
    stop.set()
    if interval is not None:
        sampler.join()
    return Measured(time.perf_counter() - started, peak, proc.returncode, err)
