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
    peak_pss_bytes: int
    returncode: int
    stderr: str

    @property
    def peak_pss_gib(self) -> float:
        return self.peak_pss_bytes / 2**30


def tree_pss(pid: int) -> int:
    """Summed PSS of ``pid`` and its descendants: shared pages (model weights) count once."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(cmd: list[str], interval: float = 0.2) -> Measured:
    """Run ``cmd`` from the repo root, sampling the tree's PSS every ``interval`` seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_pss(proc.pid))
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    return Measured(time.perf_counter() - started, peak, proc.returncode, err)
