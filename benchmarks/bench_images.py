"""Image generation: `selfcorrect generate` on picture prompts vs a bare vLLM call with the same pictures,
and memory with 1x and 10x the image prompts.

    python benchmarks/bench_images.py [--prompts 32] [--n 4] [--max-tokens 32] [--repeats 2] [--out runs/bench_images]

The model is the tests' tiny random Idefics3 (32 x 32 pictures as 7 tokens, SmolLM2's tokenizer),
built once under ``--out``: no vision-language weights can be downloaded here, and vLLM's CPU build
cannot import its LLaVA module without torchvision. The
prompts are the built-in picture questions (96 x 96 PNG). Both sides get the same prompts, the same
pictures, the same n, max_tokens, temperature and per-prompt seeds (the stage's), so they produce the
same tokens; the comparison is the stage's overhead — Ray Data, the turn logic, the image store
(each picture read and decoded once per actor), the processor's chat template and the Parquet
writes. Start-up is excluded on both sides, as in bench_generate.py. Peak memory is the summed PSS
of the `selfcorrect generate` process tree at 1x and 10x the prompts (the same shard size, so 10x
is ten times the shards, streamed); the image store's size and the rows' share of it are reported
beside it. Name the CPU's bf16 flags beside the figures (lscpu | grep -o -E 'amx_bf16|avx512_bf16').
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.measure import run_measured  # noqa: E402


def tiny_vlm(out: Path) -> Path:
    folder = out / "tiny-vlm"
    if not (folder / "model.safetensors").exists():
        from conftest import build_tiny_vlm

        build_tiny_vlm(folder)
    return folder


def stage_args(run_dir: Path, model: Path, prompts: int, n: int, max_tokens: int, shard_size: int) -> list[str]:
    return [
        "configs/quickstart.yaml",
        f"run_dir={run_dir}",
        f"model={model}",
        "prompts.builtin=pictures",
        f"prompts.size={prompts}",
        f"prompts.limit={prompts}",  # the quickstart's prompts.limit must not cap the 10x run
        "generate.mode=single",
        f"generate.n={n}",
        f"generate.max_tokens={max_tokens}",
        "generate.temperature=1.0",
        f"generate.shard_size={shard_size}",
        "generate.engine.max_model_len=512",
        "ray.include_dashboard=false",
    ]


def run_stage(run_dir: Path, model: Path, prompts: int, n: int, max_tokens: int, shard: int, memory: bool) -> dict:
    cmd = [sys.executable, "-m", "cluster.cli", "generate", *stage_args(run_dir, model, prompts, n, max_tokens, shard)]
    m = run_measured([*cmd, "--overwrite"], interval=0.5 if memory else None)
    if m.returncode != 0:
        raise SystemExit(f"selfcorrect generate failed:\n{m.stderr[-3000:]}")
    summary = json.loads((run_dir / "generate" / "_SUCCESS.json").read_text())
    seconds = summary["wall_seconds_this_run"] - summary["startup_seconds"]
    store = list((run_dir / "images").iterdir())
    return {
        "cli_wall_s": m.seconds,
        "samples": summary["samples"],
        "tokens": summary["generated_tokens"],
        "startup_s": summary["startup_seconds"],
        "engine_tokens_per_s": summary["engine_tokens_per_s"],
        "tokens_per_s": summary["generated_tokens"] / seconds,
        "peak_pss_gib": m.peak_pss_gib,
        "images_stored": len(store),
        "image_store_bytes": sum(p.stat().st_size for p in store),
        "shard_bytes": sum(p.stat().st_size for p in (run_dir / "generate").glob("*.parquet")),
    }


def bare_vllm(model: Path, prompts: int, n: int, max_tokens: int) -> dict:
    """The same prompts and pictures straight into ``vllm.LLM.generate`` (token ids and multi_modal_data)."""
    import io

    from PIL import Image
    from vllm import LLM, SamplingParams

    from cluster.config import load_config
    from datagen.engine import engine_env, engine_kwargs
    from datagen.generate import plan_generate
    from datagen.turns import derive_seed
    from datagen.vision import VisionPrompter

    overrides = stage_args(Path("/unused"), model, prompts, n, max_tokens, 1)[1:]
    cfg = load_config(ROOT / "configs/quickstart.yaml", overrides)
    plan = plan_generate(cfg.prompts, cfg.generate, cfg.model, cfg.model_cache, cfg.seed)
    os.environ.update(engine_env(cfg.generate.engine))
    t0 = time.perf_counter()
    llm = LLM(**engine_kwargs(cfg.generate.engine, plan.model_path, cfg.seed), limit_mm_per_prompt={"image": 1})
    startup = time.perf_counter() - t0
    prompter = VisionPrompter(plan.model_path)
    inputs, params = [], []
    for p in plan.prompts:
        pictures = [Image.open(io.BytesIO(s.read())).convert("RGB") for s in p.image_sources]
        ids = prompter.encode(p.messages, len(pictures))
        inputs.append({"prompt_token_ids": ids, "multi_modal_data": {"image": pictures}})
        seed = derive_seed(cfg.seed, p.prompt_id, "a1")
        params.append(SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=seed))
    t0 = time.perf_counter()
    outs = llm.generate(inputs, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    llm.llm_engine.engine_core.shutdown()
    return {"engine_startup_s": startup, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--mem-prompts", type=int, default=16, help="prompts of the 1x memory run (10x is ten times)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of the stage and bare vLLM")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_images")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = tiny_vlm(args.out)
    results: dict = {"prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens, "model": "tiny Idefics3"}
    stage_runs, bare_runs = [], []
    for i in range(args.repeats):  # alternating; the best of each counts (a stray process slows one run)
        run = args.out / f"throughput{i}"
        stage_runs.append(run_stage(run, model, args.prompts, args.n, args.max_tokens, args.prompts, memory=False))
        print(json.dumps(stage_runs[-1], indent=2), flush=True)
        bare_runs.append(bare_vllm(model, args.prompts, args.n, args.max_tokens))
        print(json.dumps(bare_runs[-1], indent=2), flush=True)
    results["selfcorrect"] = max(stage_runs, key=lambda r: r["tokens_per_s"])
    results["bare_vllm"] = max(bare_runs, key=lambda r: r["tokens_per_s"])
    results["runs_tokens_per_s"] = {
        "selfcorrect": [r["tokens_per_s"] for r in stage_runs],
        "bare_vllm": [r["tokens_per_s"] for r in bare_runs],
    }
    results["ratio_vs_bare_vllm"] = results["selfcorrect"]["tokens_per_s"] / results["bare_vllm"]["tokens_per_s"]
    if not args.skip_memory:
        shard = max(args.mem_prompts // 2, 1)
        one = run_stage(args.out / "mem1", model, args.mem_prompts, 2, 16, shard, memory=True)
        ten = run_stage(args.out / "mem10", model, args.mem_prompts * 10, 2, 16, shard, memory=True)
        results["memory"] = {"1x": one, "10x": ten, "growth": ten["peak_pss_gib"] / one["peak_pss_gib"]}
    print(json.dumps(results, indent=2))
    (args.out / "bench_images.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
