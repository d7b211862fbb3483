"""DPO/SFT through TRL and through Ray Train on a tiny random Llama: losses, LoRA, resume, vLLM."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import ray.cloudpickle
import torch
from rl_rows import judged_row, toy_scl_rows, write_judged
from transformers import TrainerCallback

from datagen.shards import StageDir
from rl.build import run_build
from rl.config import BuildConfig, TrainConfig
from rl.losses import LN2
from rl.train import GroupedWindowSampler, build_trainer, run_train

# Callbacks defined here travel to the Ray Train workers, which cannot import this file.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _build(tmp: Path, rows, cfg: BuildConfig | None = None) -> StageDir:
    out = StageDir(tmp / "build")
    run_build(cfg or BuildConfig(), write_judged(tmp / "judge", rows), out, echo=False)
    return out


def _loop_cfg(model: Path, build: StageDir, train: TrainConfig) -> dict:
    return {
        "train": train.model_dump(mode="json"),
        "model_path": str(model),
        "data_files": [str(p) for p in build.shard_paths()],
    }


def test_grouped_sampler_keeps_groups_in_one_window_and_is_deterministic():
    groups = [g for g, k in [("a", 4), ("b", 2), ("c", 1), ("d", 3), ("e", 2), ("f", 4)] for _ in range(k)]
    s = GroupedWindowSampler(groups, window=4, seed=3)
    order = list(s)
    assert len(order) == len(s) and len(s) % 4 == 0
    windows = [order[i : i + 4] for i in range(0, len(order), 4)]
    for g in set(groups):
        members = {i for i, x in enumerate(groups) if x == g}
        assert sum(1 for w in windows if members & set(w)) == 1, g
    assert set(order) == set(range(len(groups)))
    assert len(order) - len(set(order)) == s.padding
    again = GroupedWindowSampler(groups, window=4, seed=3)
    assert list(again) == order
    s.set_epoch(1)
    assert len(list(s)) == len(order)


def _windows_of(order: list[int], window: int, members: set[int]) -> list[int]:
    return sorted({i // window for i, x in enumerate(order) if x in members})


def test_grouped_sampler_splits_a_group_of_3_over_consecutive_steps_of_2():
    # a: 3 examples, b: 1, c: 2; a step holds 2 -> [a a] [a b] [c c] in some order, a's two adjacent
    groups = ["a", "a", "a", "b", "c", "c"]
    s = GroupedWindowSampler(groups, window=2, seed=5)
    assert s.split_groups == 1 and s.padding == 0 and len(s) == 6
    for epoch in range(6):
        s.set_epoch(epoch)
        order = list(s)
        assert sorted(order) == list(range(6))  # every example once per epoch
        a = _windows_of(order, 2, {0, 1, 2})
        assert a == [a[0], a[0] + 1]  # consecutive steps
        assert _windows_of(order, 2, {4, 5}) in ([0], [1], [2])  # a group that fits is not split
        again = GroupedWindowSampler(groups, window=2, seed=5)
        again.set_epoch(epoch)
        assert list(again) == order  # a function of (seed, epoch)


def test_grouped_sampler_random_sizes_keep_length_and_adjacency():
    import random

    rng = random.Random(0)
    for trial in range(30):
        sizes = [rng.randint(1, 7) for _ in range(rng.randint(1, 12))]
        groups = [f"g{j}" for j, k in enumerate(sizes) for _ in range(k)]
        window = rng.randint(1, 4)
        s = GroupedWindowSampler(groups, window=window, seed=trial)
        lengths = set()
        for epoch in range(3):
            s.set_epoch(epoch)
            order = list(s)
            lengths.add(len(order))
            assert set(order) == set(range(len(groups))) and len(order) - len(groups) == s.padding
            for j in range(len(sizes)):
                w = _windows_of(order, window, {i for i, g in enumerate(groups) if g == f"g{j}"})
                assert w == list(range(w[0], w[0] + len(w)))
                assert len(w) == -(-sizes[j] // window)
        assert len(lengths) == 1  # fixed epoch length


def test_config_validation():
    from cluster.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="algorithm: unknown training algorithm 'ppo'"):
        load_config(None, ["train.algorithm=ppo"])
    with pytest.raises(ValueError):
        TrainConfig(algorithm="sft", sft_beta=0.1)
    with pytest.raises(ValueError):
        TrainConfig(sft_beta=1.5)
    with pytest.raises(ValueError):
        TrainConfig(algorithm="sft", sft_first={"epochs": 1})
    with pytest.raises(ValueError):
        TrainConfig(too_long="truncate")
    with pytest.raises(ValueError):
        TrainConfig(lora={"rank": 4})
    assert TrainConfig(batch_size=2, grad_accum=3, num_workers=2).global_batch == 12


def test_dpo_standalone_ln2_loss_falls_and_only_lora_moves(tmp_path, tiny_model_dir):
    build = _build(tmp_path, toy_scl_rows(4))
    train = TrainConfig(batch_size=4, max_steps=8, lr=5e-3, log_every=1, scheduler="constant")
    trainer, _ = build_trainer(_loop_cfg(tiny_model_dir, build, train), str(tmp_path / "hf"), use_cpu=True)
    model = trainer.model
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(not model.get_parameter(n).requires_grad for n in base)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[0] == pytest.approx(LN2, abs=1e-6)
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(model.get_parameter(n), p) for n, p in base.items())
    assert any(not torch.equal(model.get_parameter(n), p) for n, p in lora.items())


def test_sft_standalone_on_selfee_chains(tmp_path, tiny_model_dir):
    rows = [
        judged_row(f"p{i}", 0, attempt1="41", feedbacks=["Wrong. Revision is needed."], revisions=["42"])
        for i in range(4)
    ]
    build = _build(tmp_path, rows, BuildConfig(builder="selfee"))
    train = TrainConfig(algorithm="sft", batch_size=2, max_steps=3, lr=5e-3, log_every=1)
    trainer, _ = build_trainer(_loop_cfg(tiny_model_dir, build, train), str(tmp_path / "hf"), use_cpu=True)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_sft_loss_covers_the_assistant_reply_only(tmp_path, tiny_model_dir):
    """Prompt tokens (system, question, the assistant header) get label -100; the chain is learned."""
    rows = [
        judged_row(f"p{i}", 0, attempt1="41" * (i + 1), feedbacks=["Wrong. Revision is needed."], revisions=["42"])
        for i in range(3)
    ]
    build = _build(tmp_path, rows, BuildConfig(builder="selfee"))
    train = TrainConfig(algorithm="sft", batch_size=3, max_steps=1)
    trainer, pair_ids = build_trainer(_loop_cfg(tiny_model_dir, build, train), str(tmp_path / "hf"), use_cpu=True)
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    seen = set()
    columns = ("input_ids", "labels", "attention_mask", "row_ids")
    for ids, labels, mask, row_id in zip(*(batch[c].tolist() for c in columns), strict=True):
        pid = pair_ids[row_id].split(":")[0]
        seen.add(pid)
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": f"question {pid}"}], tokenize=False, add_generation_prompt=True
        )
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        n_real = sum(mask)
        assert tok.decode(ids[:n_prompt]) == prompt
        assert labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:n_real] == ids[n_prompt:n_real]  # every token of the reply is learned
        assert labels[n_real:] == [-100] * (len(ids) - n_real)  # padding
        assert tok.decode(ids[n_prompt:n_real]).startswith("41") and "### Revision 1:\n42" in tok.decode(ids)
    assert seen == {"p0", "p1", "p2"}


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, tiny_model_dir, ray_local):
    """One DPO+SFT LoRA run through Ray Train (1 worker), shared by the checks below."""
    tmp = tmp_path_factory.mktemp("ray-run")
    build = _build(tmp, toy_scl_rows(4))
    train = TrainConfig(batch_size=4, max_steps=2, lr=5e-3, sft_beta=0.1, log_every=1, checkpoint_every=1)
    live = tmp / "metrics.live.jsonl"
    summary = run_train(train, str(tiny_model_dir), build, tmp / "train", callbacks=[CopyAtEnd(str(live))])
    return tmp, build, train, summary


class CopyAtEnd(TrainerCallback):
    """Keep what rank 0 appended to metrics.jsonl while training (the stage rewrites it at the end)."""

    def __init__(self, dst: str):
        self.dst = dst

    def on_train_end(self, args, state, control, **kwargs):
        import ray.train

        src = Path(self.dst).parent / "train" / "metrics.jsonl"
        if ray.train.get_context().get_world_rank() == 0:
            Path(self.dst).write_bytes(src.read_bytes())


def test_ray_run_writes_per_step_metrics(ray_run):
    tmp, *_ = ray_run
    history = [h for h in json.loads((tmp / "train" / "log_history.json").read_text()) if "loss" in h]
    for name in ("train/metrics.jsonl", "metrics.live.jsonl"):  # the final file, and as appended per step
        lines = [json.loads(x) for x in (tmp / name).read_text().splitlines()]
        assert [r["step"] for r in lines] == [1, 2], name
        for rec, h in zip(lines, history, strict=True):
            for key in ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected", "learning_rate", "epoch"):
                assert rec[key] == h[key], (name, key)
    assert json.loads((tmp / "train" / "_progress.json").read_text()) == {"step": 2, "max_steps": 2}


def test_ray_run_exports_train_metrics(ray_run):
    # rank 0's LogMetrics callback records each logged step as Ray metrics (datagen.metrics.record_train)
    from prom_metrics import wait_for

    tmp, *_ = ray_run
    last = [h for h in json.loads((tmp / "train" / "log_history.json").read_text()) if "loss" in h][-1]
    tags = {"stage": "train", "run": tmp.name}
    wanted = [
        ("ray_selfcorrect_train_step", tags),
        ("ray_selfcorrect_train_loss", tags),
        ("ray_selfcorrect_train_value", {**tags, "name": "rewards/margins"}),
    ]
    port = ray.nodes()[0]["MetricsExportPort"]
    got = wait_for(port, wanted, timeout_s=30)  # Ray exports every 10 s by default
    assert got == [2, pytest.approx(last["loss"]), pytest.approx(last["rewards/margins"])]


def test_ray_first_step_equals_standalone_trl(ray_run, tiny_model_dir):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from rl.train import _load_dataset, train_dtype

    tmp, build, train, summary = ray_run
    assert summary["steps"] == 2
    # The same dtype as the Ray worker chose (auto: bfloat16 on a CPU with AMX/AVX512-BF16): a LoRA base
    # stored in it, and autocast.
    dtype = train_dtype(train, use_cpu=True)
    assert summary["dtype"] == str(dtype)
    bf16 = dtype.name == "bfloat16"
    ray_log = json.loads((tmp / "train" / "log_history.json").read_text())
    trl = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=getattr(torch, dtype.name)),
        args=DPOConfig(
            output_dir=str(tmp / "plain"),
            per_device_train_batch_size=4,
            max_steps=1,
            learning_rate=5e-3,
            beta=0.1,
            loss_type=["sigmoid", "sft"],
            loss_weights=[0.9, 0.1],  # ms-swift's sft_beta 0.1: 0.9 * DPO + 0.1 * SFT
            bf16=bf16,
            use_cpu=True,
            gradient_checkpointing=False,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            seed=0,
        ),
        train_dataset=_load_dataset([str(p) for p in build.shard_paths()], "dpo").select_columns(
            ["prompt", "chosen", "rejected"]
        ),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
        ),
    )
    trl.train()
    plain = trl.state.log_history[0]
    assert ray_log[0]["loss"] == pytest.approx(plain["loss"], abs=1e-5)
    assert ray_log[0]["grad_norm"] == pytest.approx(plain["grad_norm"], abs=1e-5)
    assert ray_log[0]["loss"] > LN2 + 0.1  # the SFT term is in (0.9 ln 2 + 0.1 * NLL, NLL ~ ln V)


def test_saved_model_and_adapter_are_written(ray_run):
    """Both forms of the trained model; vLLM serving the merged one is tests/cluster/test_run_cli.py's eval."""
    tmp, *_ = ray_run
    assert (tmp / "train" / "model" / "config.json").exists()
    assert (tmp / "train" / "adapter" / "adapter_config.json").exists()


def test_group_larger_than_a_step_after_sft_first_through_ray(tmp_path, tiny_model_dir, ray_local):
    """p0 has 3 pairs (one chosen), p1 1, p2 2; a step holds 2: p0 runs over two consecutive steps.
    sft_first trains SFT on each distinct (prompt, chosen) once, and DPO starts from that model."""
    from safetensors.torch import load_file

    rows = [
        judged_row(
            f"p{p}",
            i,
            attempt1=f"wrong {p} {i}",
            attempt2="right 0" if p == 0 else f"right {p} {i}",
            verifier_score1=0.0,
            verifier_score2=1.0,
        )
        for p, n in enumerate((3, 1, 2))
        for i in range(n)
    ]
    build = _build(tmp_path, rows)
    train = TrainConfig(
        batch_size=1,
        grad_accum=2,
        lr=1e-3,
        log_every=1,
        log_samples=True,
        checkpoint_every=100,
        sft_first={"epochs": 1, "lr": 5e-3},
    )
    summary = run_train(train, str(tiny_model_dir), build, tmp_path / "train")
    assert summary["steps"] == 3
    assert summary["data"]["groups_split"] == 1 and summary["data"]["padding"] == 0
    lines = [json.loads(x) for x in (tmp_path / "train" / "samples" / "rank0.jsonl").read_text().splitlines()]
    assert lines[0] == {"start": 0}
    steps = lines[1:]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert sorted(i for s in steps for i in s["ids"]) == sorted(r["pair_id"] for r in build.read().to_pylist())
    p0 = [s["step"] for s in steps if any(i.startswith("p0:") for i in s["ids"])]
    assert p0 == [p0[0], p0[0] + 1]

    sft_dir = tmp_path / "train" / "sft"
    sft = json.loads((sft_dir / "_SUCCESS.json").read_text())
    assert sft["algorithm"] == "sft" and sft["steps"] == 2  # p0 once, p1, p2 twice: 4 examples
    sft_lines = [json.loads(x) for x in (sft_dir / "samples" / "rank0.jsonl").read_text().splitlines()]
    sft_ids = [i for x in sft_lines for i in x.get("ids", [])]
    assert sorted(sft_ids) == ["p0:0", "p1:0", "p2:0", "p2:1"]
    assert summary["sft_first"]["model"] == str(sft_dir / "model")
    base = load_file(tiny_model_dir / "model.safetensors")
    tuned = load_file(sft_dir / "model" / "model.safetensors")
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k in tuned)
    dpo_log = json.loads((tmp_path / "train" / "log_history.json").read_text())
    assert dpo_log[0]["loss"] == pytest.approx(LN2, abs=1e-5)  # the SFT model is policy and reference


def test_first_step_loss_is_the_sft_beta_mix_of_rl_losses(tmp_path, tiny_model_dir):
    """At step 1 the policy is the reference (LoRA B = 0): TRL's loss must be rl.losses.dpo_sft_loss,
    (1 - sft_beta) * ln 2 + sft_beta * NLL(chosen), with the NLL computed here from the model itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl.losses import dpo_sft_loss, token_logps

    build = _build(tmp_path, toy_scl_rows(1))
    # float32: the formula is the point, and the reference below is computed in float32
    train = TrainConfig(batch_size=1, max_steps=1, lr=1e-6, sft_beta=0.5, log_every=1, precision="fp32")
    trainer, _ = build_trainer(_loop_cfg(tiny_model_dir, build, train), str(tmp_path / "hf"), use_cpu=True)
    trainer.train()
    logged = trainer.state.log_history[0]["loss"]

    pair = build.read().to_pylist()[0]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    full = tok.apply_chat_template(pair["prompt"] + pair["chosen"], tokenize=True, return_dict=True)["input_ids"]
    prompt = tok.apply_chat_template(pair["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)
    p_ids = prompt["input_ids"]  # the completion starts where the two diverge, as TRL counts it
    n_prompt = next((i for i, (a, b) in enumerate(zip(p_ids, full, strict=False)) if a != b), len(p_ids))
    ids = torch.tensor([full])
    labels = ids.clone()
    labels[:, :n_prompt] = -100
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(ids).logits
    per_token = token_logps(logits, labels)
    mask = labels[:, 1:] != -100
    same = per_token.sum(-1)
    expected = dpo_sft_loss(same, same, same, same, per_token, mask, beta=0.1, sft_beta=0.5).item()
    nll = -per_token[mask].mean().item()
    assert expected == pytest.approx(0.5 * LN2 + 0.5 * nll, abs=1e-6)
    assert logged == pytest.approx(expected, rel=1e-4)
