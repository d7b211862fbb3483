"""The trainer's numerics on a GPU against float32 on the CPU: one SCoRe update, one DPO(+SFT) step, and the
sender side of the weight sync, on a small random Llama built here (nothing is downloaded; no Ray, no vLLM).

    python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--out gpu_check.json]

1. SCoRe: ``rl.score_step.train_step`` on stage-II episodes (fixed token ids, rewards, engine log-probs) with
   the project's LoRA (``rl.trl_bridge.peft_config``), from the same LoRA weights, once on the CPU in float32
   (the reference) and on the device in float32 and in the dtype ``datagen.hardware.resolve_dtype`` picks
   (bfloat16 on the GPU; bfloat16 on a CPU too, ``--device cpu``): pg loss, KL per token, gradient norm, the
   clipped gradients and the step the optimizer took, each as relative error against the reference.
2. DPO: ``rl.losses.dpo_sft_loss`` (SCL's sft_beta 0.1) against the frozen reference (the disabled adapter):
   ln 2 while the policy equals the reference, then one AdamW step compared as above.
3. Weight sync: ``rl.rollout.merged_state_dict`` in the engines' dtype and ``adapter_payload``, each saved as
   safetensors bytes as ``RolloutClient.sync_weights`` sends them: the merged weights must be half the float32
   bytes and give the policy's logits.
Step times are medians after a warm-up. Prints a table (device, dtype, metric, value, tolerance, ok); the JSON
goes to ``--out`` (stdout without it); exits 1 when a check fails.

It needs torch (with CUDA), transformers, peft, safetensors, pyarrow and pydantic, and neither Ray nor
vLLM, so it runs on a bare GPU box. Where pydantic is missing and there is no network, bring its wheels
(for the box's Python, e.g. 3.12) and put them on the path first:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d wheels pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 typing-extensions==4.16.0      # about 3 MB, on a machine with network
    python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl   # on the GPU box
    PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --out gpu_check.json       # a minute or two
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from datagen.hardware import resolve_dtype  # noqa: E402
from rl.config import TrainConfig  # noqa: E402
from rl.episodes import Attempt, Episode  # noqa: E402
from rl.logprobs import pad_batch  # noqa: E402
from rl.losses import LN2, dpo_sft_loss, token_logps  # noqa: E402
from rl.rollout import adapter_payload, merged_state_dict  # noqa: E402
from rl.score_step import Policy, train_step  # noqa: E402
from rl.trl_bridge import peft_config  # noqa: E402

SIZES = {  # model; the batch: prompts x n episodes (half as many DPO pairs), prompt and attempt lengths; timing steps
    "full": {"hidden": 256, "layers": 4, "heads": 4, "vocab": 4096, "prompts": 4, "n": 4, "prompt": 96, "tokens": 64,
             "warmup": 1, "timed": 3},
    "quick": {"hidden": 64, "layers": 2, "heads": 2, "vocab": 512, "prompts": 2, "n": 2, "prompt": 16, "tokens": 8,
              "warmup": 0, "timed": 1},
}  # fmt: skip
# Relative error against float32 on the CPU. float32 elsewhere differs only in the order of its sums. bfloat16
# keeps 8 bits of mantissa (2^-8 = 4e-3 per rounding); a loss or a norm sums many of them. Adam's first step is
# lr * g / |g|: where a gradient entry is within bfloat16's noise of 0 its sign, and that entry's step, flips.
# SCoRe's pg loss adds terms of both signs (RLOO's advantages sum to 0 over a prompt): its relative error is larger.
TOLERANCE = {"float32": {"value": 1e-4, "pg_loss": 1e-4, "vector": 1e-4, "step": 1e-3},
             "bfloat16": {"value": 2e-2, "pg_loss": 5e-2, "vector": 5e-2, "step": 0.35}}  # fmt: skip


@dataclass
class Row:
    device: str
    dtype: str
    metric: str
    value: float
    tolerance: float | None = None  # None: a figure, not a check
    ok: bool = True
    note: str = ""


def build(size: dict[str, int], t: TrainConfig, device: str, dtype: torch.dtype, lora: dict | None) -> Any:
    """The random Llama (seed 0, built in float32 on the CPU, so every device starts from the same weights) in
    ``dtype`` on ``device`` with the project's LoRA over it, as the SCoRe trainer sets it up; ``lora``: the
    adapter's tensors to start from (None: PEFT's own init, B = 0, the policy equal to its reference)."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    h = size["hidden"]
    config = LlamaConfig(vocab_size=size["vocab"], hidden_size=h, intermediate_size=h * 8 // 3,
                         num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["heads"], max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    model = get_peft_model(base, peft_config(t))  # PEFT keeps the adapter float32 over a bfloat16 base
    for name, p in model.named_parameters():
        if lora is not None and "lora_" in name:
            p.data.copy_(lora[name])
    return model


def trainable(model: Any, grads: bool = False) -> torch.Tensor:
    """The LoRA weights (or their gradients) as one float32 CPU vector, in name order."""
    parts = sorted((n, p.grad if grads else p) for n, p in model.named_parameters() if p.requires_grad)
    return torch.cat([x.detach().float().cpu().flatten() for _, x in parts])


def median_time(device: str, fn: Any, size: dict[str, int]) -> float:
    """Seconds of ``fn``: the median of ``size["timed"]`` calls after ``size["warmup"]`` untimed ones."""
    times = []
    for i in range(size["warmup"] + size["timed"]):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= size["warmup"]:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def episodes(size: dict[str, int]) -> list[Episode]:
    """A stage-II batch as rollouts bring it: attempt 2 after attempt 1 and the correction instruction, binary
    rewards that differ within a prompt (RLOO's advantages are not all 0), the engine's log-probs near uniform."""
    g = torch.Generator().manual_seed(1)
    ids = lambda n: torch.randint(3, size["vocab"], (n,), generator=g).tolist()  # noqa: E731
    engine = lambda n: (-torch.log(torch.tensor(float(size["vocab"]))) + 0.3 * torch.randn(n, generator=g)).tolist()  # noqa: E731
    out, k, p = [], size["tokens"], size["prompt"]
    for i in range(size["prompts"] * size["n"]):
        x1, y1 = ids(p), ids(k - i % 3)
        first = Attempt(x1, y1, engine(len(y1)), "", "stop", reward=float(i % 2))
        y2 = ids(k)
        second = Attempt(x1 + y1 + ids(k // 2), y2, engine(k), "", "stop", reward=float(i % 3 == 0))
        out.append(Episode(f"p{i // size['n']}", i % size["n"], 0, first, second))
    return out


def score_run(size: dict[str, int], t: TrainConfig, device: str, dtype: torch.dtype, lora: dict) -> dict[str, Any]:
    """One SCoRe update (stage II) from ``lora``: its stats, clipped gradients and new LoRA weights; then the
    median time of further updates."""
    model = build(size, t, device, dtype, lora)
    policy = Policy(model, None, 0, torch.device(device), t.score.temperature)
    opt = torch.optim.AdamW(policy.trainable(), lr=t.lr, weight_decay=t.weight_decay)
    grads: list[torch.Tensor] = []
    hook = opt.register_step_pre_hook(lambda *_: grads.append(trainable(model, grads=True)))
    batch = episodes(size)
    stats = train_step(policy, opt, batch, 2, t)
    hook.remove()
    after = trainable(model)
    seconds = median_time(device, lambda: train_step(policy, opt, batch, 2, t), size)
    return {**stats.as_dict(), "grads": grads[0], "after": after, "seconds": seconds}


def dpo_batch(size: dict[str, int], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen then rejected completions of the same prompts, padded together: (ids, attention, labels)."""
    g = torch.Generator().manual_seed(2)
    ids = lambda n: torch.randint(3, size["vocab"], (n,), generator=g).tolist()  # noqa: E731
    pairs = size["prompts"] * size["n"] // 2
    prompts = [ids(size["prompt"]) for _ in range(pairs)]
    seqs = [(x, ids(size["tokens"])) for x in prompts] + [(x, ids(size["tokens"] - 2)) for x in prompts]
    input_ids, attn, mask = pad_batch(seqs, 0)
    labels = input_ids.clone()
    labels[:, 0] = -100
    labels[:, 1:][mask == 0] = -100  # only completion tokens count, as TRL's DPO labels them
    return input_ids.to(device), attn.to(device), labels.to(device)


def dpo_loss(model: Any, batch: tuple[torch.Tensor, ...], t: TrainConfig, sft_beta: float) -> torch.Tensor:
    ids, attn, labels = batch
    half = len(ids) // 2
    tok = token_logps(model(input_ids=ids, attention_mask=attn).logits, labels)
    with torch.no_grad(), model.disable_adapter():
        ref = token_logps(model(input_ids=ids, attention_mask=attn).logits, labels).sum(-1)
    mask = labels[:half, 1:] != -100
    seq = tok.sum(-1)
    return dpo_sft_loss(seq[:half], seq[half:], ref[:half], ref[half:], tok[:half], mask, t.beta, sft_beta)


def dpo_run(size: dict[str, int], t: TrainConfig, device: str, dtype: torch.dtype, lora: dict) -> dict[str, Any]:
    """ln 2 at PEFT's init; then from ``lora`` one DPO+SFT step: loss, gradient norm, gradients, new weights."""
    batch = dpo_batch(size, device)
    with torch.no_grad():
        ln2 = float(dpo_loss(build(size, t, device, dtype, None), batch, t, 0.0))
    model = build(size, t, device, dtype, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    out: dict[str, Any] = {"ln2": ln2}

    def step() -> None:
        loss = dpo_loss(model, batch, t, 0.1)  # SCL's sft_beta
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        if "loss" not in out:
            out.update(loss=float(loss.detach()), grad_norm=float(norm), grads=trainable(model, grads=True))
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.setdefault("after", trainable(model))

    step()
    return {**out, "seconds": median_time(device, step, size)}


def sync_run(size: dict[str, int], t: TrainConfig, device: str, dtype: torch.dtype, lora: dict) -> list[Row]:
    """The trainer's side of a weight sync: bytes and seconds of each payload, and the merged weights' logits."""
    import safetensors.torch
    from transformers import LlamaForCausalLM

    model, name = build(size, t, device, dtype, lora), str(dtype).removeprefix("torch.")
    payloads = {"merged": lambda: merged_state_dict(model, name), "adapter": lambda: adapter_payload(model)[0],
                "merged_float32": lambda: merged_state_dict(model, "float32")}  # fmt: skip
    rows, sizes = [], {}
    for what, payload in payloads.items():
        send = lambda p=payload: safetensors.torch.save(p())  # noqa: E731
        seconds = median_time(device, send, size)
        sizes[what] = sum(x.numel() * x.element_size() for x in payload().values())
        rows += [Row(device, name, f"sync.{what}_bytes", len(send())), Row(device, name, f"sync.{what}_s", seconds)]
    half = sizes["merged"] / sizes["merged_float32"]
    rows.append(Row(device, name, "sync.merged_over_float32", half, 0.0, half == 0.5, "tensor bytes; must be 0.5"))
    plain = LlamaForCausalLM(model.get_base_model().config).to(device=device, dtype=dtype)
    missing, unexpected = plain.load_state_dict(merged_state_dict(model, name), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # tied: sent once
    ids = dpo_batch(size, device)[0]
    with torch.no_grad():
        want, got = model(input_ids=ids).logits.float(), plain(input_ids=ids).logits.float()
    err = float((got - want).norm() / want.norm())
    tol = TOLERANCE[name]["value"]
    rows.append(Row(device, name, "sync.merged_logits_rel_err", err, tol, err <= tol, "merged model vs the policy"))
    return rows


def compare(ref: dict[str, Any], got: dict[str, Any], device: str, dtype: str, prefix: str, start: torch.Tensor,
            values: list[str]) -> list[Row]:  # fmt: skip
    """Relative errors of ``got`` against the CPU float32 ``ref``: scalars, gradients, and the optimizer's step."""
    tol, rows = TOLERANCE[dtype], []
    for key in values:
        a, b = got[key], ref[key]
        err = abs(a - b) / max(abs(b), 1e-12)
        bound, note = tol.get(key, tol["value"]), f"{a:.6g} vs {b:.6g}"
        rows.append(Row(device, dtype, f"{prefix}.{key}", err, bound, err <= bound, note))
    for key, kind, base in (("grads", "vector", None), ("after", "step", start)):
        a, b = (got[key], ref[key]) if base is None else (got[key] - base, ref[key] - base)
        err = float((a - b).norm() / b.norm())
        rows.append(Row(device, dtype, f"{prefix}.{key}_rel_err", err, tol[kind], err <= tol[kind]))
    rows.append(Row(device, dtype, f"{prefix}.step_s", got["seconds"]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="a tiny model and batch (tests)")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "gpu_check: no CUDA device here; --device cpu checks bfloat16 against float32 on the CPU\n")
    size = SIZES["quick" if args.quick else "full"]
    torch.set_float32_matmul_precision("highest")  # float32 means float32 here: no TF32 on the GPU
    t = TrainConfig.model_validate({"algorithm": "score"})
    low = resolve_dtype(t.precision, gpu=args.device == "cuda")
    if low.name == "float32":  # a CPU without bf16 instructions: still check bfloat16 (slowly)
        low = resolve_dtype("bf16", gpu=False)
    print(f"[gpu_check] {args.device}: {low}; model {size}", flush=True)
    reference = build(size, t, "cpu", torch.float32, None)
    g = torch.Generator().manual_seed(3)
    lora = {n: (0.05 * torch.randn(p.shape, generator=g) if "lora_B" in n else p.detach().clone())
            for n, p in reference.named_parameters() if "lora_" in n}  # B != 0: the policy is off its reference
    start = torch.cat([lora[n].flatten() for n in sorted(lora)])
    rows: list[Row] = []
    for check, run, values in (("score", score_run, ["pg_loss", "kl_t1", "kl_t2", "grad_norm"]),
                               ("dpo", dpo_run, ["loss", "grad_norm"])):  # fmt: skip
        ref = run(size, t, "cpu", torch.float32, lora)
        rows.append(Row("cpu", "float32", f"{check}.step_s", ref["seconds"], note="the reference"))
        for dtype in ("float32", low.name):
            got = run(size, t, args.device, getattr(torch, dtype), lora)
            if check == "dpo":
                err = abs(got["ln2"] - LN2)
                rows.append(Row(args.device, dtype, "dpo.ln2_at_reference", got["ln2"], 1e-6, err <= 1e-6, "ln 2"))
            rows += compare(ref, got, args.device, dtype, check, start, values)
            print(f"[gpu_check] {check} {args.device} {dtype} done", flush=True)
    rows += sync_run(size, t, args.device, getattr(torch, low.name), lora)
    ok = all(r.ok for r in rows)
    print(f"{'device':6} {'dtype':8} {'metric':32} {'value':>12} {'tolerance':>9}  ok")
    for r in rows:
        tol = "" if r.tolerance is None else f"{r.tolerance:.0e}"
        print(f"{r.device:6} {r.dtype:8} {r.metric:32} {r.value:12.4g} {tol:>9}  {'ok' if r.ok else 'FAIL'}  {r.note}")
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else ""
    result = {"device": args.device, "gpu": gpu, "dtype": str(low), "torch": torch.__version__, "size": size,
              "checks": [asdict(r) for r in rows], "ok": ok}  # fmt: skip
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    print(f"[gpu_check] {'all checks passed' if ok else 'FAILED: ' + ', '.join(r.metric for r in rows if not r.ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
