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

from datagen.hardware import Dtype, resolve_dtype
from datagen.images import ImageStore
from datagen.metrics import record_train
from datagen.shards import StageInputError, atomic_write_json
from datagen.storage import read_table
from datagen.vision import is_vision_model
from rl.config import TrainConfig
from rl.raytrain import PROGRESS_FILE, append_line
from rl.sampler import GroupedWindowSampler


def _trainer_class(base: type) -> type:
    """``base`` (TRL's DPOTrainer or SFTTrainer) with group-aware order and per-step sample ids."""

    class ProjectTrainer(base):  # type: ignore[misc, valid-type]
        group_pairs: bool = True
        step_ids: list[str]
        projector_lr: float | None = None
        projector_names: list[str] = []

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

        def create_optimizer(self, *args, **kwargs):
            optimizer = super().create_optimizer(*args, **kwargs)
            if self.projector_lr is not None:  # a vision-language model's projector at its own rate (rl.vision)
                from rl.vision import projector_params, split_lr

                split_lr(optimizer, projector_params(self.model, self.projector_names), self.projector_lr)
            return optimizer

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
        """Append the ids each optimizer step trained on, one JSON line per step and rank, after a line
        ``{"start": STEP}`` for each attempt (STEP: the checkpoint's step it resumed from, else 0)."""

        def _append(self, line: dict[str, Any]) -> None:
            log_dir.mkdir(parents=True, exist_ok=True)
            with open(log_dir / f"rank{rank}.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")

        def on_train_begin(self, args, state, control, **kwargs):
            if log_dir is not None:
                self._append({"start": state.global_step})

        def on_step_end(self, args, state, control, **kwargs):
            if log_dir is not None:
                self._append({"step": state.global_step, "ids": [pair_ids[i] for i in trainer.step_ids]})
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


def _load_dataset(paths: list[str], algorithm: str, exclude: frozenset[str] = frozenset(), images: bool = False):
    """The build's examples as a ``datasets.Dataset``, less the ``exclude`` pair ids (counted upstream).

    ``images`` keeps each example's image ids (a vision-language model's training set)."""
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
    if images:
        if "images" not in table.column_names:  # a build made before images were kept
            table = table.append_column("images", pa.array([[]] * table.num_rows, pa.list_(pa.string())))
        keep.append("images")
    table = table.select([*keep, "pair_id", "group"])
    table = table.append_column("row_id", pa.array(range(table.num_rows), pa.int64()))
    return datasets.Dataset(table)


def _chosen_as_sft(table):
    """SFT on a preference set: each distinct (prompt, chosen) once. Self-Contrast's k pairs of a
    prompt share one chosen (the reference), which is its SFT example."""
    import pyarrow as pa

    seen: set[str] = set()
    messages, pair_ids, groups, images = [], [], [], []
    for r in table.to_pylist():
        conv = r["prompt"] + r["chosen"]
        key = json.dumps([conv, r.get("images") or []], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        messages.append(conv)
        pair_ids.append(r["pair_id"])
        groups.append(r["group"])
        images.append(r.get("images") or [])
    return pa.table(
        {"messages": messages, "pair_id": pair_ids, "group": groups, "images": pa.array(images, pa.list_(pa.string()))}
    )


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
    precision = train_dtype(t, use_cpu).name
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
        # Autocast: matmuls in the low precision, softmax and log-probs in float32; the weights that
        # train stay float32 (the LoRA adapters, or the whole model when there is no LoRA).
        bf16=precision == "bfloat16",
        fp16=precision == "float16",
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


def train_dtype(t: TrainConfig, use_cpu: bool) -> Dtype:
    """``train.precision`` resolved for this worker's device (``datagen.hardware``)."""
    return resolve_dtype(t.precision, gpu=not use_cpu)


def peft_config(t: TrainConfig, vision_model: torch.nn.Module | None = None):
    """PEFT's LoraConfig of ``train.lora`` (None when LoRA is off): every trainer's, DPO's, SFT's and SCoRe's.

    On a vision-language model the targets and the fully trained parts come from ``rl.vision``."""
    if not t.lora.enabled:
        return None
    from peft import LoraConfig

    targets: Any = t.lora.target_modules
    modules_to_save = None
    if vision_model is not None:
        from rl.vision import fully_trained, lora_targets

        targets = lora_targets(vision_model, t.lora, t.vision)
        modules_to_save = fully_trained(vision_model, t.vision) or None
    return LoraConfig(
        r=t.lora.r,
        lora_alpha=t.lora.alpha,
        lora_dropout=t.lora.dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
    )


_peft_config = peft_config  # the name this module's callers used


def build_trainer(cfg: dict[str, Any], output_dir: str, use_cpu: bool, extra_callbacks: list | None = None):
    """TRL's trainer as every worker (and the standalone comparison) builds it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer, SFTTrainer

    t = TrainConfig.model_validate(cfg["train"])
    dtype = train_dtype(t, use_cpu)
    vision = is_vision_model(cfg["model_path"])
    # Under LoRA a text model's base is frozen, so it needs no float32 master copy: stored in the compute
    # dtype it is not cast again at every forward (PEFT keeps the adapters in float32). A vision-language
    # model stays float32: its projector trains whole (modules_to_save), and that copy needs float32.
    weights = getattr(torch, dtype.name) if t.lora.enabled and not vision else torch.float32
    if vision:  # a vision-language model trains with its processor (rl.vision)
        from rl import vision as vlm

        processing: Any = vlm.load_processor(cfg["model_path"])
        model = vlm.load_model(cfg["model_path"], dtype=weights)
        if not t.lora.enabled:
            vlm.freeze(model, t.vision)
    else:
        processing = AutoTokenizer.from_pretrained(cfg["model_path"])
        if processing.pad_token is None:
            processing.pad_token = processing.eos_token
        model = AutoModelForCausalLM.from_pretrained(cfg["model_path"], dtype=weights)
    dataset = _load_dataset(cfg["data_files"], t.algorithm, frozenset(cfg.get("exclude") or ()), images=vision)
    pair_ids = list(dataset["pair_id"])
    cls = _trainer_class(DPOTrainer if t.algorithm == "dpo" else SFTTrainer)
    cls.group_pairs = t.group_pairs
    if vision and t.vision.projector == "full" and t.vision.projector_lr is not None:
        cls.projector_lr, cls.projector_names = t.vision.projector_lr, list(vlm.vision_parts(model).projectors)
    trainer = cls(
        model=model,
        args=_trl_args(cfg, output_dir, use_cpu),
        train_dataset=dataset,
        processing_class=processing,
        peft_config=peft_config(t, model if vision else None),
        callbacks=extra_callbacks or None,
    )
    trainer.step_ids = []
    collator = trainer.data_collator
    if vision:
        collator = vlm.with_pictures(collator, ImageStore(cfg["image_dir"]))
    trainer.data_collator = _with_row_ids(collator)
    return trainer, pair_ids


def _save_final(trainer, tokenizer_path: str, out: Path, merge: bool) -> None:
    from transformers import AutoProcessor, AutoTokenizer

    model = trainer.model
    # a vision-language model's folder needs its processor (image processor, chat template) to be served
    tokenizer = (AutoProcessor if is_vision_model(tokenizer_path) else AutoTokenizer).from_pretrained(tokenizer_path)
    if hasattr(model, "peft_config"):
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        if merge:
            # In float32: a LoRA delta added to bfloat16 weights would be rounded to their 8-bit mantissa.
            model = model.float().merge_and_unload()
        else:
            return
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
