"""What bfloat16 buys on this machine: matmul peak, and a training step of the default model in each precision.

    python benchmarks/bench_dtype.py [--model smollm2-135m-instruct] [--batch 32] [--seq 192] [--threads 2]

Prints the CPU's bf16 flags, the 2048² matmul rate in float32 and bfloat16 (the peak a trainer can
approach), then forward + backward of the model on ``batch x seq`` tokens in five set-ups: float32
full fine-tuning; float32 weights under bfloat16 autocast (what TRL's ``bf16=True`` does for full
fine-tuning); LoRA on float32 weights; LoRA on bfloat16 weights (PEFT keeps the adapters in
float32: the frozen base needs no master copy), without and with autocast. Each is timed as the
median of a few steps after a warm-up, with its share of the bfloat16 matmul peak: (6, or 4 under
LoRA, where no weight gradient is computed) x params x tokens / step time.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def matmul_gflops(dtype, n: int = 2048, reps: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def step_seconds(model, ids, autocast: bool, reps: int) -> float:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for i in range(reps + 1):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        t = time.perf_counter()
        with ctx:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        for p in params:
            p.grad = None
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from datagen.hardware import BF16_CPU_FLAGS, cpu_flags
    from datagen.models import resolve_model

    torch.set_num_threads(args.threads)
    flags = [f for f in BF16_CPU_FLAGS if f in cpu_flags()] or ["none"]
    print(f"CPU bf16 flags: {' '.join(flags)}; {args.threads} threads")
    peak32, peak16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"matmul 2048²: float32 {peak32:,.0f} GFLOPS, bfloat16 {peak16:,.0f} GFLOPS ({peak16 / peak32:.1f}x)")

    path = resolve_model(args.model, str(Path.home() / ".cache/selfcorrect/models"))
    ids = torch.randint(0, 32000, (args.batch, args.seq))
    tokens = args.batch * args.seq
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")
    setups = [
        ("float32, full", torch.float32, False, False),
        ("float32 weights, bf16 autocast, full", torch.float32, True, False),
        ("LoRA on float32", torch.float32, False, True),
        ("LoRA on bfloat16 (fp32 adapters)", torch.bfloat16, False, True),
        ("LoRA on bfloat16, bf16 autocast", torch.bfloat16, True, True),
    ]
    base = None
    for name, dtype, autocast, use_lora in setups:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        n_params = sum(p.numel() for p in model.parameters())
        if use_lora:
            model = get_peft_model(model, lora)
        model.train()
        s = step_seconds(model, ids, autocast, args.reps)
        base = base or s
        # 2N FLOPs a token forward, 2N backward to the inputs, 2N more for weight gradients (not under LoRA)
        share = (4 if use_lora else 6) * n_params * tokens / s / 1e9 / peak16
        print(f"{name:40s} {s:6.2f} s/step  {tokens / s:7.0f} tokens/s  {base / s:4.1f}x  {share:5.1%} of bf16 peak")
        del model


if __name__ == "__main__":
    main()
