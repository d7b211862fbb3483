"""Where one SCoRe update's time goes, float32 against bfloat16, on the default model (no Ray, no engine).

    python benchmarks/bench_score_step.py [--model smollm2-135m-instruct] [--episodes 16] [--tokens 64]
        [--repeats 2] [--threads 2] [--micro-batch 16] [--kl-logprobs trainer|engine]

The update the trainer takes on the laptop config (``configs/score_quickstart.yaml``: LoRA, 4 prompts x
4 episodes, attempts of up to 64 tokens), on episodes of the lengths rollouts have there (attempt 1
after a ~90-token prompt, attempt 2 after ~220 tokens), timed phase by phase: the KL-in-reward pass
(reference and policy forward; the policy's without a gradient unless an attempt fits one micro-batch,
when the loss reuses it, or the penalty takes the engine's log-probs, ``--kl-logprobs engine``), the loss
pass (backward, and the policy's forward where not reused), the optimizer step. Beside it a bare forward +
backward of the same tokens, and the share of the CPU's bfloat16 (or float32) matmul peak the update
reaches: three or four passes of 2 flops a weight a token (the LM head only at completion tokens) over the
update's seconds, against a 2048^2 matmul measured here.
Name the CPU's bf16 flags beside the figures (printed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def matmul_gflops(dtype, n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def episodes(vocab: int, count: int, tokens: int):
    import torch

    from rl.episodes import Attempt, Episode

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        ids = lambda n: torch.randint(100, vocab, (n,), generator=g).tolist()  # noqa: E731
        first = Attempt(ids(90), ids(tokens), [], "", "stop", reward=float(i % 2))
        second = Attempt(ids(90 + tokens + 60), ids(tokens), [], "", "stop", reward=float(i % 3 == 0))
        out.append(Episode(f"p{i // 4}", i % 4, 0, first, second))
    return out


def run(
    dtype_name: str, model_path: str, eps_count: int, tokens: int, repeats: int, micro_batch: int, kl_logprobs: str
) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from rl.config import TrainConfig
    from rl.score_step import Policy, Workers, attempt_update, betas, shape, update
    from rl.trl_bridge import peft_config

    t = TrainConfig.model_validate(
        {"algorithm": "score", "lr": 2e-4, "score": {"stage1_steps": 6, "stage2_steps": 18, "micro_batch": micro_batch}}
    )
    dtype = getattr(torch, dtype_name)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model = get_peft_model(base, peft_config(t))
    policy = Policy(model, None, 0, torch.device("cpu"))
    opt = torch.optim.AdamW(policy.trainable(), lr=t.lr, weight_decay=0.0)
    batch = episodes(model.config.vocab_size, eps_count, tokens)
    s, workers = t.score, Workers()
    attempts = {j: [e.attempt(j) for e in batch] for j in (1, 2)}
    seqs = {j: [a.sequence for a in attempts[j]] for j in (1, 2)}
    from_engine = kl_logprobs == "engine"
    if from_engine:  # the log-probs an engine holding these weights returns with its samples
        for j in (1, 2):
            with torch.no_grad():
                logp, mask, _ = policy.logprobs(seqs[j])
            for a, row, m in zip(attempts[j], logp, mask, strict=True):
                a.logp = row[m > 0].tolist()
    times: dict[str, list[float]] = {"kl_in_reward": [], "loss_backward": [], "optimizer": [], "bare_fwd_bwd": []}
    for _ in range(repeats + 1):  # the first round warms up
        timing: dict[str, float] = {}  # each attempt in turn, as rl.score_step.train_step takes them
        rewards, beta = shape(batch, 2, s), betas(s, 2)
        model.train()
        for j in (1, 2):
            attempt_update(policy, attempts[j], rewards[j], [e.prompt_id for e in batch], beta[j], s, workers, timing,
                           engine_logp=from_engine)
        t2 = time.perf_counter()
        update(policy, opt, t.max_grad_norm, workers)
        t3 = time.perf_counter()
        for j in (1, 2):  # the same tokens, forward and backward through the whole model, no RL around it
            for i in range(0, eps_count, s.micro_batch):
                logp, mask, _ = policy.logprobs(seqs[j][i : i + s.micro_batch])
                (logp * mask).sum().backward()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        for key, value in zip(times, (timing["kl_in_reward"], timing["loss_backward"], t3 - t2, t4 - t3), strict=True):
            times[key].append(value)
    mean = {k: sum(v[1:]) / repeats for k, v in times.items()}
    head = base.get_output_embeddings().weight.numel()  # tied to the embedding, which is no matmul
    body = sum(p.numel() for p in base.parameters()) - head
    tokens_total = sum(len(x) + len(y) for j in (1, 2) for x, y in seqs[j])
    completion = sum(len(y) for j in (1, 2) for _, y in seqs[j])  # the head runs where completion tokens are
    update_s = mean["kl_in_reward"] + mean["loss_backward"] + mean["optimizer"]
    # 2 flops a weight a token per forward: the reference's, the policy's (twice where an attempt takes more than
    # one micro-batch and the penalty does not take the engine's log-probs: without a gradient for the penalty,
    # then for the loss), and the backward to the inputs (LoRA: the frozen weights get no gradient of their own;
    # the adapter's are small)
    passes = 3 if eps_count <= micro_batch or from_engine else 4
    flops = passes * 2 * (body * tokens_total + head * completion)
    return {
        "dtype": dtype_name,
        **{f"{k}_s": round(v, 2) for k, v in mean.items()},
        "update_s": round(update_s, 2),
        "tokens": tokens_total,
        "micro_batch": micro_batch,
        "kl_logprobs": kl_logprobs,
        "gflops": round(flops / update_s / 1e9, 1),
        "matmul_peak_gflops": round(matmul_gflops(dtype), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences per forward (train.score.micro_batch)")
    parser.add_argument("--kl-logprobs", choices=("trainer", "engine"), default="trainer",
                        help="the policy's log-probs in the KL penalty (train.score.kl_logprobs)")
    parser.add_argument("--dtype", help=argparse.SUPPRESS)  # one dtype, in a process of its own
    args = parser.parse_args()
    if args.dtype:
        import torch

        from datagen.models import resolve_model

        torch.set_num_threads(args.threads)
        path = resolve_model(args.model, str(Path("~/.cache/selfcorrect/models").expanduser()))
        row = run(args.dtype, path, args.episodes, args.tokens, args.repeats, args.micro_batch, args.kl_logprobs)
        print(json.dumps(row))
        return
    flags = subprocess.run("lscpu | grep -o -E 'amx_bf16|avx512_bf16' | sort -u", shell=True, capture_output=True,
                           text=True).stdout.split()  # fmt: skip
    # Without native bf16 a bfloat16 matmul is emulated, hundreds of times slower: such a CPU gets float32 only
    dtypes = ("float32", "bfloat16") if flags else ("float32",)
    rows = []
    for dtype in dtypes:  # one after the other, each in a fresh process
        out = subprocess.run([sys.executable, __file__, "--dtype", dtype, *sys.argv[1:]], capture_output=True,
                             text=True, check=True)  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result: dict = {"cpu_bf16_flags": flags, "rows": rows}
    if len(rows) == 2:
        result["update_speedup"] = round(rows[0]["update_s"] / rows[1]["update_s"], 2)
        result["bare_fwd_bwd_speedup"] = round(rows[0]["bare_fwd_bwd_s"] / rows[1]["bare_fwd_bwd_s"], 2)
    else:
        result["note"] = "no amx_bf16/avx512_bf16: bfloat16 not timed (emulated); --dtype bfloat16 runs it anyway"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
