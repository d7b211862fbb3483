"""TRL's ``DPOTrainer`` and ``SFTTrainer`` as each Ray Train worker builds them: the build stage's Parquet
as a ``datasets.Dataset``, TRL's arguments from the train config, LoRA through PEFT, the grouped batch
order, and the callbacks that report checkpoints to Ray Train and log each step.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from datagen.metrics import record_train
from datagen.shards import StageInputError, atomic_write_json
from datagen.storage import read_table
from rl.config import TrainConfig
from rl.raytrain import PROGRESS_FILE, append_line
from rl.sampler import GroupedWindowSampler


def _trainer_class(base: type) -> type:
    """``base`` (TRL's DPOTrainer or SFTTrainer) with group-aware order and per-step sample ids."""

    class ProjectTrainer(base):  # type: ignore[misc, valid-type]
        group_pairs: bool = True
        step_ids: list[str]

        def _get_train_sampler(self, train_dataset=None):
            if self.group_pairs and "group" in self.train_dataset.column_names:
                window = (
                    self.args.per_device_train_batch_size
                    * self.args.gradient_accumulation_steps
                    * self.args.world_size
                )
                return GroupedWindowSampler(list(self.train_dataset["group"]), window, self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "row_id" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "row_id"]

        def compute_loss(self, model, inputs, *args, **kwargs):
            row_ids = inputs.pop("row_ids", None)
            if row_ids is not None and model.training:
                self.step_ids.extend(int(i) for i in row_ids.tolist())
            return super().compute_loss(model, inputs, *args, **kwargs)

    return ProjectTrainer


def _with_row_ids(collator):
    """Carry each example's ``row_id`` past the collator, so a step knows which pairs it trained on."""

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [e.pop("row_id") for e in examples]
        batch = collator(examples)
        batch["row_ids"] = torch.tensor(ids)
        return batch

    return collate


def _callbacks(trainer, cfg: dict[str, Any], pair_ids: list[str]):
    import ray.train
    from ray.train import Checkpoint
    from transformers import TrainerCallback

    rank = ray.train.get_context().get_world_rank()
    log_dir = Path(cfg["sample_log_dir"]) if cfg["log_samples"] else None
    tags = cfg.get("metric_tags") or {"stage": "train", "run": ""}

    class ReportCheckpoints(TrainerCallback):
        """Rank 0 hands each saved checkpoint to Ray Train; every rank calls report (it is a barrier)."""

        def on_save(self, args, state, control, **kwargs):
            metrics = {"step": state.global_step, "epoch": state.epoch or 0.0}
            for log in state.log_history:
                metrics.update({k: v for k, v in log.items() if isinstance(v, (int, float))})
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if rank == 0 and path.exists():
                with tempfile.TemporaryDirectory() as tmp:
                    shutil.copytree(path, Path(tmp) / "checkpoint")
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics, checkpoint=None)

    class LogSamples(TrainerCallback):
        """Append the ids each optimizer step trained on, one JSON line per step and rank."""

        def on_step_end(self, args, state, control, **kwargs):
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                line = {"step": state.global_step, "ids": [pair_ids[i] for i in trainer.step_ids]}
                with open(log_dir / f"rank{rank}.jsonl", "a") as f:
                    f.write(json.dumps(line) + "\n")
            trainer.step_ids.clear()

    class LogMetrics(TrainerCallback):
        """Rank 0 appends each logged step's numbers to ``metrics.jsonl`` and its position to ``_progress.json``,
        and records them as Ray metrics (``datagen.metrics.record_train``)."""

        def on_step_end(self, args, state, control, **kwargs):
            if rank == 0:
                record_train(tags, step=state.global_step)
            if rank == 0 and cfg.get("metrics_file"):
                progress = Path(cfg["metrics_file"]).with_name(PROGRESS_FILE)
                atomic_write_json(progress, {"step": state.global_step, "max_steps": state.max_steps})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if rank == 0 and logs and "loss" in logs:  # not the end-of-run summary
                numbers = {**{k: v for k, v in logs.items() if isinstance(v, (int, float))}, "step": state.global_step}
                record_train(tags, **numbers)
                if cfg.get("metrics_file"):
                    append_line(Path(cfg["metrics_file"]), numbers)

    return [ReportCheckpoints(), LogSamples(), LogMetrics()]


def _load_dataset(paths: list[str], algorithm: str, exclude: frozenset[str] = frozenset()):
    """The build's examples as a ``datasets.Dataset``, less the ``exclude`` pair ids (counted upstream)."""
    import datasets
    import pyarrow as pa

    table = pa.concat_tables([read_table(p) for p in paths])  # local files or objects
    if exclude:
        keep = [pid not in exclude for pid in table["pair_id"].to_pylist()]
        table = table.filter(pa.array(keep, pa.bool_()))
    if algorithm == "sft" and "messages" not in table.column_names:
        table = _chosen_as_sft(table)
    if algorithm == "sft":
        table = _prompt_completion(table)
    keep = ["prompt", "completion"] if algorithm == "sft" else ["prompt", "chosen", "rejected"]
    table = table.select([*keep, "pair_id", "group"])
    table = table.append_column("row_id", pa.array(range(table.num_rows), pa.int64()))
    return datasets.Dataset(table)


def _chosen_as_sft(table):
    """SFT on a preference set: each distinct (prompt, chosen) once. Self-Contrast's k pairs of a
    prompt share one chosen (the reference), which is its SFT example."""
    import pyarrow as pa

    seen: set[str] = set()
    messages, pair_ids, groups = [], [], []
    for r in table.to_pylist():
        conv = r["prompt"] + r["chosen"]
        key = json.dumps(conv, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        messages.append(conv)
        pair_ids.append(r["pair_id"])
        groups.append(r["group"])
    return pa.table({"messages": messages, "pair_id": pair_ids, "group": groups})


def split_at_last_user(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt, completion): the messages up to the last user turn, and the assistant turns after it.

    SFT learns only the completion (TRL's ``completion_only_loss``): the chat it answers is context,
    as in SelFee's training, where the loss covers the answer, feedback and revision chain alone.
    """
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    completion = messages[last_user + 1 :]
    if last_user < 0 or not completion or any(m["role"] != "assistant" for m in completion):
        raise StageInputError(
            "an SFT example must end with assistant turns after a user turn; got roles "
            f"{[m['role'] for m in messages]}"
        )
    return messages[: last_user + 1], completion


def _prompt_completion(table):
    """SFT ``messages`` as TRL's conversational prompt/completion columns."""
    import pyarrow as pa

    split = [split_at_last_user(m) for m in table["messages"].to_pylist()]
    messages_type = table.schema.field("messages").type
    table = table.append_column("prompt", pa.array([p for p, _ in split], messages_type))
    return table.append_column("completion", pa.array([c for _, c in split], messages_type))


def _trl_args(cfg: dict[str, Any], output_dir: str, use_cpu: bool):
    from trl import DPOConfig, SFTConfig

    t = TrainConfig.model_validate(cfg["train"])
    precision = t.precision if t.precision != "auto" else ("fp32" if use_cpu else "bf16")
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        max_length=t.max_length,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=use_cpu,
        gradient_checkpointing=t.gradient_checkpointing,
        save_strategy="steps",
        save_steps=t.checkpoint_every,
        save_total_limit=1,
        logging_steps=t.log_every,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )
    if t.algorithm == "dpo":
        # ms-swift's sft_beta (SCL): (1 - sft_beta) * DPO + sft_beta * SFT on chosen (rl.losses.dpo_sft_loss)
        loss_type, weights = (
            (["sigmoid", "sft"], [1.0 - t.sft_beta, t.sft_beta]) if t.sft_beta else (["sigmoid"], None)
        )
        return DPOConfig(beta=t.beta, loss_type=loss_type, loss_weights=weights, **common)
    # The loss covers the completion (the assistant's reply) only, never the prompt.
    return SFTConfig(completion_only_loss=True, **common)


def peft_config(t: TrainConfig):
    """PEFT's LoraConfig of ``train.lora`` (None when LoRA is off): every trainer's, DPO's, SFT's and SCoRe's."""
    if not t.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=t.lora.r,
        lora_alpha=t.lora.alpha,
        lora_dropout=t.lora.dropout,
        target_modules=t.lora.target_modules,
        task_type="CAUSAL_LM",
    )


_peft_config = peft_config  # the name this module's callers used


def build_trainer(cfg: dict[str, Any], output_dir: str, use_cpu: bool, extra_callbacks: list | None = None):
    """TRL's trainer as every worker (and the standalone comparison) builds it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer, SFTTrainer

    t = TrainConfig.model_validate(cfg["train"])
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_path"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg["model_path"], dtype=torch.float32)
    dataset = _load_dataset(cfg["data_files"], t.algorithm, frozenset(cfg.get("exclude") or ()))
    pair_ids = list(dataset["pair_id"])
    cls = _trainer_class(DPOTrainer if t.algorithm == "dpo" else SFTTrainer)
    cls.group_pairs = t.group_pairs
    trainer = cls(
        model=model,
        args=_trl_args(cfg, output_dir, use_cpu),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_peft_config(t),
        callbacks=extra_callbacks or None,
    )
    trainer.step_ids = []
    trainer.data_collator = _with_row_ids(trainer.data_collator)
    return trainer, pair_ids


def _save_final(trainer, tokenizer_path: str, out: Path, merge: bool) -> None:
    from transformers import AutoTokenizer

    model = trainer.model
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if hasattr(model, "peft_config"):
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        if merge:
            model = model.merge_and_unload()
        else:
            return
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
