"""The generate stage on a GPU: one engine per GPU, bfloat16 (skipped without CUDA)."""

import pytest

from datagen.config import GenerateConfig
from datagen.records import SAMPLE_SCHEMA, Prompt


@pytest.mark.gpu
def test_generation_worker_on_gpu_in_bfloat16(tiny_model_dir):
    from datagen.engine import GenerationWorker

    gen = GenerateConfig(n=4, max_tokens=16, engine={"dtype": "bfloat16", "num_gpus": 1, "gpu_memory_utilization": 0.3})
    worker = GenerationWorker(str(tiny_model_dir), "/unused", gen.model_dump(), seed=0)
    try:
        prompts = [Prompt(f"p{i}", [{"role": "user", "content": f"Count to {i}."}]) for i in range(8)]
        table, stats = worker({"shard": 0, "prompts": [p.to_row() for p in prompts]})
        assert table.schema == SAMPLE_SCHEMA and table.num_rows == 32 and stats["generated_tokens"] > 0
    finally:
        worker.close()
