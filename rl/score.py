"""SCoRe on Ray Train: two-stage multi-turn RL on on-policy rollouts from vLLM engine actors.

The driver starts ``train.score.rollout_actors`` engine actors (``rl.rollout.RolloutWorker``, each on
a placement group of its own) and a ``TorchTrainer`` whose workers run ``score_loop``. Each step:

1. rank 0 collects the step's episodes from the engines (attempt 1, the correction instruction,
   attempt 2; n per prompt; prompts in an order fixed by the seed), checks the batch's weights
   version against the trainer's (``max_policy_lag``), and scores both attempts with the configured
   judge through the judge stage's own ``JudgeWorker`` (rows in the data contract's schema);
2. the batch goes to every worker; rewards are shaped per stage, advantages taken per prompt (RLOO),
   and each worker computes the policy-gradient + KL loss on its share of the episodes
   (``rl.score_math``); gradients are summed over the workers and one optimizer step is taken;
3. rank 0 sends the new weights to the engines and starts sampling the next batch (with
   ``overlap``, the next batch is sampled during the update, one version behind).

Every step's episodes, rewards, advantages and version go to ``OUT/rollouts/step-NNNNNN.parquet``
and its numbers to ``OUT/metrics.jsonl``. Every ``checkpoint_every`` steps rank 0 reports a
checkpoint (trainable weights, optimizer, step, version, the best weights so far) to Ray Train; a
restarted worker group resumes from it, and the engines are re-synced to its weights first, so no
step is trained twice into the final model. At the end the kept weights (the best training reward
over ``select_window`` steps, as the paper keeps its best checkpoint, or the last) are saved as a
Hugging Face folder in ``OUT/model`` (and the adapter in ``OUT/adapter``). ``OUT`` may be on object
storage (``run_score`` says what goes there when).

pi_ref is the starting model: with LoRA, the same weights with the adapter disabled; otherwise a
frozen copy.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from datagen import storage
from datagen.config import REVIEW_PROMPTS, GenerateConfig
from datagen.metrics import record_rl, stage_tags
from datagen.records import Prompt, judge_column
from datagen.shards import STAGE_FILE, SUCCESS_FILE, StageDir, StageInputError, atomic_write_bytes, atomic_write_json
from judges.base import score_scale
from judges.config import JudgeSettings
from rl.config import TrainConfig
from rl.score_math import (
    check_lag,
    kept_candidate,
    kl_estimate,
    kl_penalty,
    policy_loss,
    reward_from_score,
    rloo_advantages,
    shaped_rewards,
)
from rl.train import FINAL_MARKER, METRICS_FILE, PROGRESS_FILE, _peft_config, _step_bar, append_line

ROLLOUT_DIR = "rollouts"
STATE_FILE = "state.json"


# --- before Ray -------------------------------------------------------------------------------


def sync_backend(cfg: TrainConfig) -> str:
    s = cfg.score
    if s.weight_sync != "auto":
        return s.weight_sync
    return "nccl" if cfg.use_gpu else "blob"


def check_score(cfg: TrainConfig, judges: dict[str, JudgeSettings], model_path: str, generate: GenerateConfig) -> None:
    """What can be refused before Ray starts (``StageInputError``: exit 2), naming the key."""
    from rl.train import check_lora_targets

    s = cfg.score
    if s.judge not in judges:
        raise StageInputError(
            f"train.score.judge: {s.judge!r} is not one of this config's judges ({', '.join(judges) or 'none'}); "
            f"add judges.{s.judge} or name one of those"
        )
    sync = sync_backend(cfg)
    if sync == "adapter" and not cfg.lora.enabled:
        raise StageInputError("train.score.weight_sync: adapter syncs a LoRA adapter; train.lora.enabled is false")
    if sync == "nccl" and not (cfg.use_gpu and generate.engine.num_gpus):
        raise StageInputError(
            "train.score.weight_sync: nccl needs GPUs on both sides (train.use_gpu and generate.engine.num_gpus); "
            "use blob on CPU"
        )
    check_lora_targets(cfg, model_path)


def score_fingerprint(
    cfg: TrainConfig, model_path: str, prompts: list[Prompt], judge_name: str, judge: JudgeSettings,
    generate: GenerateConfig,
) -> dict[str, Any]:  # fmt: skip
    """The settings and inputs that shape the trained model: a finished run with others is refused."""
    import hashlib

    from datagen.judging import PLACEMENT_KEYS, judge_versions

    ids = hashlib.sha256("\n".join(p.prompt_id for p in prompts).encode()).hexdigest()
    fp = {
        "train": cfg.model_dump(mode="json"),
        "model": model_path,
        "prompt_ids_sha256": ids,
        "judge": {judge_name: judge.model_dump(mode="json", exclude=PLACEMENT_KEYS)},
        "judge_version": judge_versions({judge_name: judge}),
        "system_prompt": generate.system_prompt,
        "top_p": generate.top_p,
        "top_k": generate.top_k,
        "max_tokens": generate.max_tokens,
    }
    return json.loads(json.dumps(fp))


def step_prompts(num_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the prompts of ``step``: consecutive slices of per-epoch shuffles (seed, epoch), so a
    resumed run samples exactly the prompts the uninterrupted one would.

    >>> step_prompts(4, 2, 0, 0) + step_prompts(4, 2, 1, 0) == sorted(step_prompts(4, 4, 0, 0))
    False
    """
    out: list[int] = []
    start = step * per_step
    while len(out) < per_step:
        epoch, pos = divmod(start + len(out), num_prompts)
        order = list(range(num_prompts))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = min(per_step - len(out), num_prompts - pos)
        out.extend(order[pos : pos + take])
    return out


# --- the worker loop ----------------------------------------------------------------------------


def _token_logprobs(model: Any, seqs: list[tuple[list[int], list[int]]], pad_id: int, device: Any, entropy: bool):
    """Log-probabilities of each completion's tokens given its prompt: (logp, mask, entropy or None), (B, L-1).

    The LM head runs only at the positions that predict completion tokens: a prompt's logits over the
    vocabulary are never needed, and they are most of the cost (and memory) for a long second-turn prompt.
    """
    length = max(len(x) + len(y) for x, y in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), length), dtype=torch.long)
    mask = torch.zeros((len(seqs), length - 1), dtype=torch.float32)
    for i, (x, y) in enumerate(seqs):
        ids[i, : len(x) + len(y)] = torch.tensor(x + y)
        attn[i, : len(x) + len(y)] = 1
        mask[i, len(x) - 1 : len(x) + len(y) - 1] = 1.0  # positions that predict y's tokens
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
    where = mask.bool()
    logits = base.get_output_embeddings()(hidden[where]).float()  # (completion tokens, vocab)
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, ids[:, 1:][where][:, None]).squeeze(-1) - lse
    logp = torch.zeros(mask.shape, dtype=picked.dtype, device=device).masked_scatter(where, picked)
    ent = None
    if entropy:
        with torch.no_grad():
            probs = torch.softmax(logits.detach(), dim=-1)
            token_ent = lse.detach() - (probs * logits.detach()).sum(-1)
            ent = torch.zeros(mask.shape, device=device).masked_scatter(where, token_ent)
    return logp, mask, ent


def _reference(model: Any, ref: Any):
    """The reference model as a context: LoRA's base (adapter disabled) or the frozen copy."""
    if ref is not None:
        return contextlib.nullcontext(ref)

    @contextlib.contextmanager
    def disabled():
        with model.disable_adapter():
            yield model

    return disabled()


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def train_step(
    model: Any, ref: Any, optimizer: Any, batch: list[dict[str, Any]], stage: int, t: TrainConfig,
    rank: int, world: int, pad_id: int, device: Any,
) -> dict[str, Any]:  # fmt: skip
    """One SCoRe update on the judged, unflagged episodes of ``batch`` (every worker holds the whole batch)."""
    import torch.distributed as dist

    s = t.score
    episodes = [e for e in batch if not e["flagged"]]
    groups = [e["prompt_id"] for e in episodes]
    betas = {1: s.beta2 if stage == 1 else s.beta1, 2: s.beta1}
    seqs = {j: [(e[f"x{j}_ids"], e[f"y{j}_ids"]) for e in episodes] for j in (1, 2)}
    r1, r2 = shaped_rewards(
        [e["reward1"] for e in episodes], [e["reward2"] for e in episodes], stage, s.alpha, s.shaping,
        (s.seed_values.improved, s.seed_values.partial, s.seed_values.unchanged),
    )  # fmt: skip
    rewards = {1: r1, 2: r2}
    mine = list(range(rank, len(episodes), world))
    numbers: dict[str, float] = {}
    if s.kl_in == "reward":
        # R_j -= beta_j * sum_t (logp - ref_logp): needs both models' log-probs before the advantages
        for j in (1, 2):
            pen = [0.0] * len(episodes)
            with torch.no_grad():
                for idx in _chunks(mine, s.micro_batch):
                    part = [seqs[j][i] for i in idx]
                    logp, mask, _ = _token_logprobs(model, part, pad_id, device, False)
                    with _reference(model, ref) as r:
                        ref_logp, _, _ = _token_logprobs(r, part, pad_id, device, False)
                    for i, v in zip(idx, kl_penalty(logp, ref_logp, mask).tolist(), strict=True):
                        pen[i] = v
            if world > 1:
                buf = torch.tensor(pen, device=device)
                dist.all_reduce(buf)
                pen = buf.tolist()
            rewards[j] = [r - betas[j] * p for r, p in zip(rewards[j], pen, strict=True)]
            numbers[f"kl_penalty_t{j}"] = fmean(pen) if pen else 0.0
    advantages = {j: rloo_advantages(rewards[j], groups, s.baseline) for j in (1, 2)}
    model.train()
    sums = torch.zeros(8, dtype=torch.float64)  # pg1, kl1, ent1, tok1, pg2, kl2, ent2, tok2
    for j in (1, 2):
        tokens = sum(len(y) for _, y in seqs[j])
        denom = float(max(1, tokens if s.loss_agg == "token_mean" else len(episodes)))
        for idx in _chunks(mine, s.micro_batch):
            part = [seqs[j][i] for i in idx]
            if not any(y for _, y in part):
                continue
            logp, mask, ent = _token_logprobs(model, part, pad_id, device, True)
            with torch.no_grad(), _reference(model, ref) as r:
                ref_logp, _, _ = _token_logprobs(r, part, pad_id, device, False)
            adv = torch.tensor([advantages[j][i] for i in idx], dtype=torch.float32, device=device)
            loss, pg, _ = policy_loss(
                logp, ref_logp, mask, adv, betas[j], estimator=s.kl_estimator, kl_in_loss=s.kl_in == "loss",
                agg=s.loss_agg, denominator=denom,
            )  # fmt: skip
            loss.backward()
            with torch.no_grad():
                k = 4 * (j - 1)
                sums[k] += float(pg)
                sums[k + 1] += float((kl_estimate(logp, ref_logp, s.kl_estimator) * mask).sum())
                sums[k + 2] += float((ent * mask).sum())
                sums[k + 3] += float(mask.sum())
    params = [p for p in model.parameters() if p.requires_grad]
    if world > 1:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    pg1, kl1, ent1, tok1, pg2, kl2, ent2, tok2 = sums.tolist()
    numbers.update(
        pg_loss=pg1 + pg2,
        kl_t1=kl1 / max(tok1, 1),
        kl_t2=kl2 / max(tok2, 1),
        entropy_t1=ent1 / max(tok1, 1),
        entropy_t2=ent2 / max(tok2, 1),
        grad_norm=grad_norm,
        shaped_t1=fmean(rewards[1]) if episodes else 0.0,
        shaped_t2=fmean(rewards[2]) if episodes else 0.0,
    )
    return numbers


def judge_episodes(
    episodes: list[dict[str, Any]], prompts: dict[str, Prompt], worker: Any, judge: str,
    scale: tuple[float, float] | None, gen: GenerateConfig, model: str, seed: int, review: str,
) -> dict[str, int]:  # fmt: skip
    """Score both attempts of every episode with the judge stage's worker; set reward1/2 and ``flagged``.

    Rows go through ``JudgeWorker.judge_table`` in the data contract's sample schema, exactly as the
    judge stage sees generate rows. A judge error, a missing/NaN score or one outside the judge's
    scale flags the episode (left out of the update, counted by reason).
    """
    import pyarrow as pa

    from datagen.records import SAMPLE_SCHEMA
    from datagen.turns import base_conversation, sample_row

    rows = []
    for e in episodes:
        p = prompts[e["prompt_id"]]
        row = sample_row(p, e["sample_idx"], gen, model, seed)
        conv = base_conversation(p, gen)
        row.update(
            attempt1=e["y1_text"], attempt1_tokens=len(e["y1_ids"]), attempt1_finish=e["y1_finish"],
            review_prompt=review, attempt2=e["y2_text"], attempt2_tokens=len(e["y2_ids"]),
            attempt2_finish=e["y2_finish"], generated_tokens=len(e["y1_ids"]) + len(e["y2_ids"]),
            conversation=[*conv, {"role": "assistant", "content": e["y1_text"]}, {"role": "user", "content": review},
                          {"role": "assistant", "content": e["y2_text"]}],
        )  # fmt: skip
        rows.append(row)
    judged, _ = worker.judge_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    s1 = judged[judge_column(judge, "score1")].to_pylist()
    s2 = judged[judge_column(judge, "score2")].to_pylist()
    errors = judged[judge_column(judge, "error")].to_pylist()
    counts: dict[str, int] = {}
    for e, a, b, err in zip(episodes, s1, s2, errors, strict=True):
        e["score1"], e["score2"] = a, b
        e["reward1"], e["reward2"] = reward_from_score(a, scale), reward_from_score(b, scale)
        reason = ""
        if e["y2_finish"] == "context":
            reason = "no_room_for_attempt2"
        elif err:
            reason = "judge_error"
        elif e["reward1"] is None or e["reward2"] is None:
            reason = "bad_score"  # NaN, missing, or outside the judge's scale
        e["flagged"] = reason
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def _write_rollouts(path: storage.Location, step: int, stage: int, lag: int, episodes: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = ("prompt_id", "sample_idx", "version", "y1_text", "y1_finish", "y2_text", "y2_finish", "score1", "score2",
            "reward1", "reward2", "flagged")  # fmt: skip
    rows = [
        {
            "step": step, "stage": stage, "policy_lag": lag, **{k: e.get(k) for k in keys},
            "tokens1": len(e["y1_ids"]), "tokens2": len(e["y2_ids"]),
        }  # fmt: skip
        for e in episodes
    ]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    atomic_write_bytes(path, buf.getvalue())


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


def _logp_mismatch(episodes: list[dict[str, Any]], model: Any, pad_id: int, device: Any, limit: int = 4) -> float:
    """Mean |trainer log-prob - engine log-prob| over a few episodes' attempt-1 tokens: near 0 when the
    engine holds the trainer's weights (a health check of the weight sync)."""
    sample = [e for e in episodes if e["y1_ids"] and e["y1_logp"]][:limit]
    if not sample:
        return float("nan")
    with torch.no_grad():
        logp, mask, _ = _token_logprobs(model, [(e["x1_ids"], e["y1_ids"]) for e in sample], pad_id, device, False)
    diffs = []
    for i, e in enumerate(sample):
        ours = logp[i][mask[i] > 0].tolist()
        diffs += [abs(a - b) for a, b in zip(ours, e["y1_logp"], strict=False) if not math.isnan(b)]
    return fmean(diffs) if diffs else float("nan")


def score_loop(c: dict[str, Any]) -> None:
    """The Ray Train worker: the SCoRe loop, resumable from the last reported checkpoint."""
    import ray.train
    import safetensors.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.judging import JudgeWorker
    from rl.rollout import RolloutClient

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t = TrainConfig.model_validate(c["train"])
    s = t.score
    use_cpu = not torch.cuda.is_available()
    if use_cpu:
        torch.set_num_threads(max(1, math.ceil(t.cpus_per_worker)))
    device = ray.train.torch.get_device()
    torch.manual_seed(t.seed)
    tokenizer = AutoTokenizer.from_pretrained(c["model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bf16 = t.precision == "bf16" or (t.precision == "auto" and not use_cpu)
    dtype = torch.bfloat16 if bf16 else torch.float16 if t.precision == "fp16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(c["model_path"], dtype=dtype).to(device)
    ref = None
    if t.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, _peft_config(t))
    else:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    if t.gradient_checkpointing:  # non-reentrant: gradients reach LoRA weights behind frozen embeddings
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(  # Adam when weight_decay is 0, as the paper
        [p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay
    )
    state: dict[str, Any] = {"step": 0, "version": 0, "best": None, "window": []}
    best_weights: dict[str, torch.Tensor] | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            d = Path(d)
            if (d / FINAL_MARKER).exists():
                ray.train.report({"final": 1}, checkpoint=checkpoint if rank == 0 else None)
                return
            state = json.loads((d / STATE_FILE).read_text())
            _load_trainable(model, safetensors.torch.load_file(str(d / "trainable.safetensors")))
            optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=False))
            if (d / "best.safetensors").exists():
                best_weights = safetensors.torch.load_file(str(d / "best.safetensors"))
    total = s.total_steps
    prompts = [Prompt.from_row(r) for r in c["prompts"]]
    by_id = {p.prompt_id: p for p in prompts}
    gen = GenerateConfig.model_validate(c["generate"])
    review = REVIEW_PROMPTS.get(s.review_prompt, s.review_prompt)
    out = storage.as_location(c["out_dir"])
    metrics_file = Path(c["metrics_file"])
    client = judge = None
    if rank == 0:
        storage.makedirs(out / ROLLOUT_DIR)
        _pull_metrics(c["metrics_object"], metrics_file)
        client = RolloutClient(c["actors"], c["sync"], s.sync_timeout_s, c["gpus_per_actor"])
        judge = JudgeWorker({s.judge: c["judge"]})
        if state["version"]:
            client.sync_weights(model, state["version"])  # the engines hold the starting weights

    def submit(step: int) -> None:
        rows = [c["prompts"][i] for i in step_prompts(len(prompts), s.prompts_per_step, step, t.seed)]
        client.submit(step, rows, state["version"], s.n, s.temperature, review)

    if rank == 0 and state["step"] < total:
        submit(state["step"])
    for step in range(state["step"], total):
        started = time.perf_counter()
        stage = 1 if step < s.stage1_steps else 2
        payload: list[Any] = [None]
        if rank == 0:
            got = client.collect(step, model, state["version"])
            lag = check_lag(got["version"], state["version"], s.max_policy_lag)
            if s.overlap and step + 1 < total:
                submit(step + 1)  # sampled during this update: one version behind when trained
            judge_started = time.perf_counter()
            flags = judge_episodes(got["episodes"], by_id, judge, s.judge, score_scale(c["judge_type"]), gen,
                                   c["model_name"], t.seed, review)  # fmt: skip
            payload = [{"episodes": got["episodes"], "lag": lag, "flags": flags, "rollout": {
                "seconds": got["seconds"], "tokens": got["tokens"], "redone": got["redone"],
                "judge_seconds": time.perf_counter() - judge_started,
                "mismatch": _logp_mismatch(got["episodes"], model, pad_id, device) if lag == 0 else float("nan"),
            }}]  # fmt: skip
        if world > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(payload, src=0)
        batch = payload[0]
        episodes = batch["episodes"]
        valid = [e for e in episodes if not e["flagged"]]
        acc1 = fmean(e["reward1"] for e in valid) if valid else float("nan")
        acc2 = fmean(e["reward2"] for e in valid) if valid else float("nan")
        # the training reward of the weights that sampled this batch; keep: best snapshots them before the update
        state["window"] = ([*state["window"], (acc1 + acc2) / 2] if valid else state["window"])[-s.select_window :]
        window = fmean(state["window"]) if state["window"] else float("nan")
        best = state["best"]["reward"] if state["best"] else None
        candidate = kept_candidate(state["window"], s.select_window, state["version"], best) if valid else None
        if rank == 0 and s.keep == "best" and candidate is not None:
            state["best"] = {"reward": candidate, "step": step, "version": state["version"]}
            best_weights = _trainable_state(model)
        train_started = time.perf_counter()
        numbers = train_step(model, ref, optimizer, episodes, stage, t, rank, world, pad_id, device)
        train_seconds = time.perf_counter() - train_started
        state["version"] += 1
        state["step"] = step + 1
        if rank == 0:
            sync = client.sync_weights(model, state["version"]) if step + 1 < total else {"seconds": 0, "bytes": 0}
            if not s.overlap and step + 1 < total:
                submit(step + 1)
            _write_rollouts(out / ROLLOUT_DIR / f"step-{step:06d}.parquet", step, stage, batch["lag"], episodes)
            ro = batch["rollout"]
            i2c = sum(1 for e in valid if e["reward2"] > e["reward1"])
            c2i = sum(1 for e in valid if e["reward2"] < e["reward1"])
            record = {
                "step": step + 1, "stage": stage, "reward_t1": acc1, "reward_t2": acc2, "delta": acc2 - acc1,
                "delta_i2c": i2c / len(valid) if valid else float("nan"),
                "delta_c2i": c2i / len(valid) if valid else float("nan"),
                "reward_window": window, "episodes": len(episodes), "flagged": len(episodes) - len(valid),
                **{f"flagged_{k}": v for k, v in batch["flags"].items()},
                **numbers, "loss": numbers["pg_loss"], "policy_lag": batch["lag"], "version": state["version"],
                "rollout_seconds": ro["seconds"], "rollout_tokens": ro["tokens"],
                "rollout_tokens_per_s": ro["tokens"] / ro["seconds"] if ro["seconds"] else 0.0,
                "rollouts_redone": ro["redone"], "engine_restarts": client.restarts,
                "judge_seconds": ro["judge_seconds"], "logp_mismatch": ro["mismatch"],
                "train_seconds": train_seconds, "sync_seconds": sync["seconds"], "sync_bytes": sync["bytes"],
                "step_seconds": time.perf_counter() - started, "learning_rate": t.lr,
            }  # fmt: skip
            if (step + 1) % t.log_every == 0 or step + 1 == total:
                append_line(metrics_file, record)
                if c["metrics_object"]:
                    storage.write_bytes(storage.as_location(c["metrics_object"]), metrics_file.read_bytes())
            record_rl(
                stage_tags(out), step=step + 1, loss=record["loss"],
                kl={"turn1": numbers["kl_t1"], "turn2": numbers["kl_t2"]},
                rewards={"turn1": acc1, "turn2": acc2}, rollout_tokens=ro["tokens"], rollout_seconds=ro["seconds"],
                weight_sync_s=sync["seconds"] if sync["bytes"] else None, weight_sync_bytes=sync["bytes"] or None,
                policy_lag=batch["lag"], flagged=len(episodes) - len(valid), grad_norm=numbers["grad_norm"],
            )  # fmt: skip
            progress = {"step": step + 1, "max_steps": total, "pid": os.getpid(), "engine_pids": client.pids}
            atomic_write_json(Path(c["progress_file"]), progress)
        if (step + 1) % t.checkpoint_every == 0 and step + 1 < total:
            _report_checkpoint(rank, state, model, optimizer, best_weights)
    _finish(rank, state, model, best_weights, c, t)


def _pull_metrics(uri: str | None, local: Path) -> None:
    """On object storage, start from the log as uploaded (a worker resumed on another machine keeps its lines)."""
    if uri and storage.exists(storage.as_location(uri)):
        local.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(local, storage.read_bytes(storage.as_location(uri)))


def _report_checkpoint(rank: int, state: dict[str, Any], model: Any, optimizer: Any,
                       best: dict[str, torch.Tensor] | None) -> None:  # fmt: skip
    import ray.train
    import safetensors.torch

    metrics = {"step": state["step"], "version": state["version"]}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        safetensors.torch.save_file(_trainable_state(model), str(d / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), d / "optimizer.pt")
        if best is not None:
            safetensors.torch.save_file(best, str(d / "best.safetensors"))
        (d / STATE_FILE).write_text(json.dumps(state))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _finish(rank: int, state: dict[str, Any], model: Any, best: dict[str, torch.Tensor] | None,
            c: dict[str, Any], t: TrainConfig) -> None:  # fmt: skip
    """Rank 0 saves the kept weights (best or last) as the final model; every rank reports."""
    import ray.train
    from transformers import AutoTokenizer

    kept = {"kept": "last", "kept_step": state["step"], "kept_reward": None, "version": state["version"]}
    metrics = {"final": 1, "step": state["step"], **kept}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    if t.score.keep == "best" and best is not None and state["best"] is not None:
        _load_trainable(model, best)
        metrics.update(kept="best", kept_step=state["best"]["step"], kept_reward=state["best"]["reward"])
    with tempfile.TemporaryDirectory() as tmp:
        final = Path(tmp)
        tokenizer = AutoTokenizer.from_pretrained(c["model_path"])
        if hasattr(model, "peft_config"):
            model.save_pretrained(final / "adapter")
            tokenizer.save_pretrained(final / "adapter")
            model = model.merge_and_unload()
        model.save_pretrained(final / "model")
        tokenizer.save_pretrained(final / "model")
        atomic_write_json(final / FINAL_MARKER, metrics)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


# --- the driver ---------------------------------------------------------------------------------


def _start_actors(cfg: TrainConfig, model_path: str, generate: GenerateConfig, seed: int, sync: str):
    """The rollout engines, each on a placement group of its own; refused clearly when they cannot be placed."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from datagen.engine import engine_env
    from rl.rollout import RolloutWorker

    s = cfg.score
    engine = generate.engine
    bundle = {"CPU": engine.num_cpus, **({"GPU": engine.num_gpus} if engine.num_gpus else {})}
    worker = ray.remote(RolloutWorker)
    actors, groups = [], []
    for i in range(s.rollout_actors):
        pg = placement_group([bundle], name=f"selfcorrect-rollout-{i}")
        groups.append(pg)
        try:
            ray.get(pg.ready(), timeout=s.sync_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise StageInputError(
                f"rollout engine {i} of train.score.rollout_actors={s.rollout_actors} needs {bundle} "
                f"(generate.engine.num_cpus/num_gpus); the cluster could not place it within "
                f"{s.sync_timeout_s:g} s (it has {ray.cluster_resources()})"
            ) from None
        actors.append(
            worker.options(
                num_cpus=engine.num_cpus,
                num_gpus=engine.num_gpus,
                max_restarts=engine.max_restarts,
                max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg),
                runtime_env={"env_vars": engine_env(engine)},
            ).remote(
                model_path,
                engine.model_dump(),
                generate.model_dump(),
                seed,
                s.max_tokens or generate.max_tokens,
                sync,
                cfg.lora.r if cfg.lora.enabled else None,
            )
        )
    ray.get([a.ready.remote() for a in actors], timeout=s.sync_timeout_s * 2)
    return actors, groups


def _dedupe_metrics(path: Path) -> int:
    """Keep the last line of each step: a resumed run logs the steps it trained again."""
    if not path.exists():
        return 0
    by_step: dict[int, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            by_step[json.loads(line)["step"]] = line
    atomic_write_bytes(path, "".join(by_step[k] + "\n" for k in sorted(by_step)).encode())
    return len(by_step)


def run_score(
    cfg: TrainConfig,
    model_path: str,
    model_name: str,
    prompts: list[Prompt],
    generate: GenerateConfig,
    judge_name: str,
    judge: JudgeSettings,
    out_dir: str | os.PathLike[str] | storage.ObjectPath,
    overwrite: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Train with SCoRe; the kept model lands in ``out_dir/model``. Needs Ray initialised.

    A finished run is kept; a stopped one resumes from its last checkpoint. ``out_dir`` may be on object
    storage: Ray Train's checkpoints go there directly, so a new driver anywhere resumes from them; each
    step's rollouts are one upload of a whole Parquet file, and the metrics log, appended to on local
    disk, is uploaded whole after each line. A step (sampling, judging, an update) takes seconds to
    minutes and the log is small, so one more PUT per step costs nothing beside it, and a run that moves
    to another machine keeps every step's record. The model and adapter are uploaded at the end.
    """
    import shutil

    import ray
    from ray.util.placement_group import remove_placement_group

    from rl.train import make_trainer, publish_final

    out = StageDir(out_dir)
    fingerprint = score_fingerprint(cfg, model_path, prompts, judge_name, judge, generate)
    if out.done() and not overwrite:
        out.check(fingerprint)
        return out.summary()
    out.start(fingerprint, overwrite=overwrite)
    remote = isinstance(out.path, storage.ObjectPath)
    # what is written through the local file system: the whole stage locally, a mirror on object storage
    local = storage.local_cache(out.path.parent, out.path.name).resolve() if remote else out.path.resolve()
    if remote and overwrite:
        shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True, exist_ok=True)
    metrics_object = out.path / METRICS_FILE if remote else None
    sync = sync_backend(cfg)
    started = time.perf_counter()
    actors, groups = _start_actors(cfg, model_path, generate, seed, sync)
    try:
        loop_cfg = {
            "train": cfg.model_dump(mode="json"),
            "model_path": model_path,
            "model_name": model_name,
            "prompts": [p.to_row() for p in prompts],
            "generate": generate.model_dump(),
            "judge": judge.model_dump(),
            "judge_type": judge.type,
            "actors": actors,
            "sync": sync,
            "gpus_per_actor": int(generate.engine.num_gpus),
            "out_dir": str(out.path) if remote else str(local),  # rollouts go straight there
            "metrics_file": str(local / METRICS_FILE),
            "metrics_object": str(metrics_object) if metrics_object else None,
            "progress_file": str(local / PROGRESS_FILE),
        }
        trainer = make_trainer(score_loop, loop_cfg, cfg, out.path)
        with _step_bar(local / PROGRESS_FILE):
            result = trainer.fit()
    finally:
        try:
            ray.get([a.close.remote() for a in actors], timeout=60)
        except Exception:  # a dead or stuck engine: killing the actor below is enough
            pass
        for a in actors:
            ray.kill(a)
        for pg in groups:
            remove_placement_group(pg)
    if result.checkpoint is None:
        raise RuntimeError("training ended without a final checkpoint")
    final = publish_final(result.checkpoint, local)
    if metrics_object is not None:
        _pull_metrics(str(metrics_object), local / METRICS_FILE)  # rank 0 may have run on another machine
    steps = _dedupe_metrics(local / METRICS_FILE)
    log = [json.loads(x) for x in (local / METRICS_FILE).read_text().splitlines()] if steps else []
    if remote:
        storage.upload_folder(local, out.path, skip=(STAGE_FILE, SUCCESS_FILE, ROLLOUT_DIR))
    summary = {
        "algorithm": "score",
        "steps": final["step"],
        "stage1_steps": cfg.score.stage1_steps,
        "stage2_steps": cfg.score.stage2_steps,
        "kept": final.get("kept"),
        "kept_step": final.get("kept_step"),
        "kept_reward": final.get("kept_reward"),
        "weight_sync": sync,
        "prompts": len(prompts),
        "episodes": sum(r.get("episodes", 0) for r in log),
        "flagged": sum(r.get("flagged", 0) for r in log),
        "first": {k: log[0].get(k) for k in ("reward_t1", "reward_t2")} if log else None,
        "last": {k: log[-1].get(k) for k in ("reward_t1", "reward_t2")} if log else None,
        "seconds": round(time.perf_counter() - started, 2),
        "model": str(out.path / "model"),
        "adapter": str(out.path / "adapter") if cfg.lora.enabled else None,
        "rollouts": str(out.path / ROLLOUT_DIR),
    }
    for key in ("sync_seconds", "sync_bytes", "rollout_tokens_per_s", "train_seconds", "step_seconds"):
        values = [r[key] for r in log if isinstance(r.get(key), (int, float)) and r.get(key)]
        summary[f"mean_{key}"] = fmean(values) if values else None
    out.mark_done(summary)
    print(f"[score] kept the {summary['kept']} weights (step {summary['kept_step']})", file=sys.stderr)
    return summary
