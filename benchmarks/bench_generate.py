"""Generation throughput and memory: `selfcorrect generate` vs a bare vLLM call vs HF `generate`.

    python benchmarks/bench_generate.py [--prompts 32] [--n 4] [--max-tokens 64] [--repeats 2] [--out runs/bench]

All three get the same prompts (built-in arithmetic, chat template applied), the same n, the same
max_tokens and temperature. The bare vLLM call uses the same per-prompt seeds as the stage, so both
produce the same tokens; the comparison is pure overhead. Throughput counts generated tokens
(up to EOS) over generation time. One-time start-up is excluded in both vLLM cases: for the
bare call the engine's construction, for the stage everything until its first engine is ready
(``startup_seconds``: Ray Data planning, the actor's start, imports, engine construction). Ray
Data scheduling, the turn logic, tokenisation, the Parquet writes and the driver's final check
stay in. Peak memory is the summed PSS of the `selfcorrect generate` process tree (driver, Ray,
actors, engine), sampled every 0.5 s in separate runs at 1x and 10x the prompts (the throughput
runs are not sampled).
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

from benchmarks.measure import run_measured  # noqa: E402


def stage_args(run_dir: Path, prompts: int, n: int, max_tokens: int, shard_size: int) -> list[str]:
    return [
        "configs/quickstart.yaml",
        f"run_dir={run_dir}",
        f"prompts.limit={prompts}",
        "generate.mode=single",
        f"generate.n={n}",
        f"generate.max_tokens={max_tokens}",
        "generate.temperature=1.0",
        f"generate.shard_size={shard_size}",
        "ray.include_dashboard=false",
    ]


def run_stage(run_dir: Path, prompts: int, n: int, max_tokens: int, shard_size: int, memory: bool) -> dict:
    args = stage_args(run_dir, prompts, n, max_tokens, shard_size)
    cmd = [sys.executable, "-m", "cluster.cli", "generate", *args, "--overwrite"]
    # Sampling memory costs CPU on a small machine: throughput runs are timed only.
    m = run_measured(cmd, interval=0.5 if memory else None)
    if m.returncode != 0:
        raise SystemExit(f"selfcorrect generate failed:\n{m.stderr[-3000:]}")
    summary = json.loads((run_dir / "generate" / "_SUCCESS.json").read_text())
    gen_seconds = summary["wall_seconds_this_run"] - summary["startup_seconds"]
    return {
        "cli_wall_s": m.seconds,
        "tokens": summary["generated_tokens"],
        "startup_s": summary["startup_seconds"],
        "engine_tokens_per_s": summary["engine_tokens_per_s"],
        "worker_tokens_per_s": summary["worker_tokens_per_s"],
        "stage_seconds_excl_startup": gen_seconds,
        "tokens_per_s": summary["generated_tokens"] / gen_seconds,
        "peak_pss_gib": m.peak_pss_gib,
    }


def load_plan(prompts: int, n: int, max_tokens: int):
    from cluster.config import load_config
    from datagen.generate import plan_generate

    overrides = stage_args(Path("/unused"), prompts, n, max_tokens, prompts)[1:]
    cfg = load_config(ROOT / "configs/quickstart.yaml", overrides)
    return cfg, plan_generate(cfg.prompts, cfg.generate, cfg.model, cfg.model_cache, cfg.seed)


def bare_vllm(prompts: int, n: int, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from datagen.engine import engine_env, engine_kwargs
    from datagen.turns import derive_seed

    cfg, plan = load_plan(prompts, n, max_tokens)
    os.environ.update(engine_env(cfg.generate.engine))  # what the stage's actors get
    t0 = time.perf_counter()
    llm = LLM(**engine_kwargs(cfg.generate.engine, plan.model_path, cfg.seed))
    startup = time.perf_counter() - t0
    tok = llm.get_tokenizer()
    inputs, params = [], []
    for p in plan.prompts:
        text = tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
        inputs.append({"prompt_token_ids": tok(text, add_special_tokens=False)["input_ids"]})
        params.append(
            SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=derive_seed(cfg.seed, p.prompt_id, "a1"))
        )
    t0 = time.perf_counter()
    outs = llm.generate(inputs, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    llm.llm_engine.engine_core.shutdown()
    return {"engine_startup_s": startup, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def hf_generate(prompts: int, n: int, max_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, plan = load_plan(prompts, n, max_tokens)
    tok = AutoTokenizer.from_pretrained(plan.model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(plan.model_path, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) for p in plan.prompts]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **batch, do_sample=True, temperature=1.0, max_new_tokens=max_tokens, num_return_sequences=n,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
        )
    seconds = time.perf_counter() - t0
    new = out[:, batch["input_ids"].shape[1] :]
    eos = tok.eos_token_id
    tokens = 0
    for row in new.tolist():
        tokens += row.index(eos) + 1 if eos in row else len(row)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--mem-prompts", type=int, default=12, help="prompts of the 1x memory run (10x is ten times)")
    ap.add_argument("--mem-max-tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of the stage and bare vLLM")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--only-stage", action="store_true", help="run only the selfcorrect throughput part")
    args = ap.parse_args()
    results: dict = {"prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens}
    # One shard holds every prompt, so the engine sees the same batch as the bare call: the ratio
    # is the cost of Ray and the stage, not of a smaller batch. Runs alternate and the best of each
    # counts, as timeit does: on a small machine a stray process slows whichever run it lands on.
    stage_runs, bare_runs = [], []
    for i in range(args.repeats):
        stage_runs.append(
            run_stage(args.out / f"throughput{i}", args.prompts, args.n, args.max_tokens, args.prompts, memory=False)
        )
        print(json.dumps(stage_runs[-1], indent=2), flush=True)
        if args.only_stage:
            continue
        bare_runs.append(bare_vllm(args.prompts, args.n, args.max_tokens))
        print(json.dumps(bare_runs[-1], indent=2), flush=True)
    results["selfcorrect"] = max(stage_runs, key=lambda r: r["tokens_per_s"])
    results["selfcorrect_runs_tokens_per_s"] = [r["tokens_per_s"] for r in stage_runs]
    if args.only_stage:
        return
    results["bare_vllm"] = max(bare_runs, key=lambda r: r["tokens_per_s"])
    results["bare_vllm_runs_tokens_per_s"] = [r["tokens_per_s"] for r in bare_runs]
    results["hf_generate"] = hf_generate(args.prompts, args.n, args.max_tokens)
    sc = results["selfcorrect"]["tokens_per_s"]
    results["ratio_vs_bare_vllm"] = sc / results["bare_vllm"]["tokens_per_s"]
    results["ratio_vs_hf_generate"] = sc / results["hf_generate"]["tokens_per_s"]
    if not args.skip_memory:
        # the same shard size at both scales: 10x the prompts is 10x the shards, streamed
        shard = max(args.mem_prompts // 2, 1)
        one = run_stage(args.out / "mem1", args.mem_prompts, 2, args.mem_max_tokens, shard, memory=True)
        ten = run_stage(args.out / "mem10", args.mem_prompts * 10, 2, args.mem_max_tokens, shard, memory=True)
        results["memory"] = {"1x": one, "10x": ten, "growth": ten["peak_pss_gib"] / one["peak_pss_gib"]}
    print(json.dumps(results, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_generate.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
