"""SCoRe's NCCL weight sync between a trainer GPU and an engine GPU (skipped without two GPUs)."""

from __future__ import annotations

import json

import pytest
import torch
from test_score import _cli, _config

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs: one trainer, one engine")
def test_nccl_sync_keeps_the_engine_on_the_trainers_weights(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir, stage1_steps=1, stage2_steps=2, weight_sync="nccl", sync_timeout_s=300)
    proc = _cli("train", str(config), "train.use_gpu=true", "generate.engine.num_gpus=1",
                "generate.engine.gpu_memory_utilization=0.3")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = [json.loads(x) for x in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["logp_mismatch"] < 1e-2 for r in log), log  # bf16 on GPU: a looser bound than fp32 on CPU
