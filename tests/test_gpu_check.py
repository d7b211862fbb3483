"""benchmarks/gpu_check.py on the CPU at its tiny size: bfloat16 against float32 through the real SCoRe step, the
DPO loss and the weight-sync payloads, every check present and passing (the same script runs on a GPU)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

PER_DTYPE = [
    "score.pg_loss", "score.kl_t1", "score.kl_t2", "score.grad_norm", "score.grads_rel_err", "score.after_rel_err",
    "dpo.ln2_at_reference", "dpo.loss", "dpo.grad_norm", "dpo.grads_rel_err", "dpo.after_rel_err",
]  # fmt: skip
SYNC = ["sync.merged_over_float32", "sync.merged_logits_rel_err"]  # in the low dtype only


def test_gpu_check_on_cpu_quick(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] and result["device"] == "cpu"
    checks = {(r["dtype"], r["metric"]): r for r in result["checks"] if r["tolerance"] is not None}
    assert result["dtype"].startswith("bfloat16")  # --device cpu checks bfloat16 whatever the CPU
    expected = {(d, m) for d in ("float32", "bfloat16") for m in PER_DTYPE} | {("bfloat16", m) for m in SYNC}
    assert not expected - set(checks), expected - set(checks)
    assert checks["bfloat16", "sync.merged_over_float32"]["value"] == 0.5
    assert abs(checks["bfloat16", "dpo.ln2_at_reference"]["value"] - math.log(2)) < 1e-6
    # bfloat16 really differs from float32 (the comparison is not of a run with itself), within its tolerance
    assert 0 < checks["bfloat16", "score.pg_loss"]["value"] <= checks["bfloat16", "score.pg_loss"]["tolerance"]
    timings = [r for r in result["checks"] if r["metric"].endswith("_s")]
    assert timings and all(r["value"] > 0 for r in timings)
    assert "all checks passed" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: nothing to refuse")
def test_gpu_check_without_cuda_says_so():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True)
    assert proc.returncode == 2 and "--device cpu" in proc.stderr, proc.stderr[-2000:]
