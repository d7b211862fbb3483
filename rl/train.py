"""DPO and SFT on Ray Train: TRL's trainers inside a ``TorchTrainer``, with LoRA, checkpoints and resume.

Each Ray Train worker builds TRL's ``DPOTrainer`` or ``SFTTrainer`` over the build stage's Parquet;
Ray Train sets up the process group (gloo on CPU, NCCL on GPU) and transformers' Trainer trains
data-parallel over it. Every ``checkpoint_every`` optimizer steps the Trainer saves a checkpoint
and rank 0 reports it to Ray Train, which keeps it under ``OUT_DIR/ray/``. When a worker dies, Ray
Train restarts the worker group (``max_failures`` times) and each worker resumes from the last
reported checkpoint: the Trainer restores model, optimizer, scheduler and step, and skips the
batches it already trained on. The order of the batches is a pure function of the seed and epoch
(``GroupedWindowSampler``), so the resumed run sees exactly the data the uninterrupted one would.
Running the stage again after the driver died resumes the same way (same run name and storage).
Ray Train registers a reported checkpoint when its controller next polls the workers (every 2 s
by default): a worker group that dies inside that window resumes from the checkpoint before, and
the model state goes back with it, so no step is ever trained twice into the final model.

At the end rank 0 saves the adapter (``OUT_DIR/adapter``) and a full Hugging Face model folder
(``OUT_DIR/model``, the adapter merged in) that the generate stage loads as its ``model``.

Before Ray Train starts, ``check_data`` measures every sequence with the model's tokenizer: TRL
would cut an over-long one at ``max_length`` (the end of the answer), so such examples are refused
or, with ``too_long: drop``, left out and counted. ``sft_first`` runs an SFT on the chosen answers
into ``OUT_DIR/sft`` first (a run of its own, resumable) and DPO starts from its merged model.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from datagen.hardware import Dtype, resolve_dtype
from datagen.images import ImageStore, store_location
from datagen.metrics import record_train, stage_tags
from datagen.shards import StageDir, StageInputError, atomic_write_bytes, atomic_write_json
from datagen.storage import Location, ObjectPath, filesystem, read_json, read_table
from datagen.vision import is_vision_model
from rl.config import TrainConfig

RUN_NAME = "ray"
FINAL_MARKER = "final.json"
METRICS_FILE = "metrics.jsonl"  # per logged step, rank 0: loss, rewards/*, learning_rate, epoch, step
PROGRESS_FILE = "_progress.json"


class GroupedWindowSampler(Sampler[int]):
    """Index order in which every group's examples share an optimizer step, or consecutive ones.

    An optimizer step consumes ``window`` consecutive indices of this order (per-device batch x
    gradient accumulation x workers: accelerate hands consecutive batches to the ranks in turn).
    Each epoch the groups are shuffled with ``seed + epoch``, packed first-fit-decreasing into
    windows, and the windows shuffled. A group larger than a window is split: it fills whole
    windows and its remainder opens one more, which smaller groups may share, and those windows stay
    together through the shuffle, so the group is trained over consecutive steps (``split_groups``
    counts such groups). First-fit-decreasing over the same multiset of sizes always gives the same
    number of windows, so the epoch length is fixed. A window with room left repeats its own
    examples to fill it (a full window keeps batch shapes and the step count exact); ``padding``
    says how many slots that took.
    """

    def __init__(self, groups: list[str], window: int, seed: int = 0):
        self.window = window
        self.seed = seed
        self.epoch = 0
        members: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        self.groups = list(members.values())
        self.split_groups = sum(1 for m in self.groups if len(m) > window)
        self._windows = self._pack(random.Random(seed))
        self.padding = len(self._windows) * window - len(groups)

    def _pack(self, rng: random.Random) -> list[list[int]]:
        groups = [list(g) for g in self.groups]
        rng.shuffle(groups)
        groups.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
        blocks: list[list[list[int]]] = []  # runs of windows that stay consecutive
        open_windows: list[list[int]] = []  # windows with room, in the order they were opened
        for g in groups:
            if len(g) > self.window:
                rng.shuffle(g)
                pieces = [g[i : i + self.window] for i in range(0, len(g), self.window)]
                blocks.append(pieces)
                if len(pieces[-1]) < self.window:
                    open_windows.append(pieces[-1])
                continue
            for w in open_windows:
                if len(w) + len(g) <= self.window:
                    w.extend(g)
                    break
            else:
                blocks.append([list(g)])
                open_windows.append(blocks[-1][0])
        rng.shuffle(blocks)
        windows = [w for block in blocks for w in block]
        for w in windows:
            rng.shuffle(w)
            w.extend(w[i % len(w)] for i in range(self.window - len(w)))
        return windows

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._windows = self._pack(random.Random(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[int]:
        for w in self._windows:
            yield from w

    def __len__(self) -> int:
        return len(self._windows) * self.window


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


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` on an O_APPEND file: a reader sees whole lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def write_step_metrics(log_history: list[dict[str, Any]], path: Path) -> int:
    """Rewrite ``metrics.jsonl`` from the trainer's final log history: one line per logged step.

    The lines appended during training repeat the steps a resumed run trained again; the final
    history (restored from the checkpoint, then extended) holds each step once.
    """
    by_step = {h["step"]: h for h in log_history if "loss" in h and "step" in h}
    lines = [json.dumps({k: v for k, v in by_step[s].items() if isinstance(v, (int, float))}) for s in sorted(by_step)]
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())
    return len(lines)


@contextlib.contextmanager
def _step_bar(progress_file: Path) -> Iterator[None]:
    """A driver-side bar over optimizer steps, following the ``_progress.json`` rank 0 writes."""
    from datagen import progress

    bar = progress.bar(desc="train", unit="step", total=None)
    stop = threading.Event()

    def update() -> None:
        try:
            pos = json.loads(progress_file.read_text())
        except (OSError, ValueError):
            return
        total, step = pos.get("max_steps") or bar.total, pos.get("step", bar.n)
        if (total, step) != (bar.total, bar.n):  # redrawn on a change only: a piped log stays short
            bar.total, bar.n = total, step
            bar.refresh()

    def follow() -> None:
        while not stop.wait(1.0):
            update()

    thread = threading.Thread(target=follow, name="train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        update()
        bar.close()


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


def _peft_config(t: TrainConfig, vision_model: torch.nn.Module | None = None):
    """LoRA settings; on a vision-language model the targets and fully trained parts come from ``rl.vision``."""
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
        peft_config=_peft_config(t, model if vision else None),
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


def train_loop(cfg: dict[str, Any]) -> None:
    """The Ray Train worker: build the trainer, resume from the last checkpoint, train, save."""
    import ray.train

    ctx = ray.train.get_context()
    use_cpu = not torch.cuda.is_available()
    if use_cpu:
        torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    checkpoint = ray.train.get_checkpoint()
    resume_dir: str | None = None
    with (
        tempfile.TemporaryDirectory() as work,
        checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as ckpt_dir,
    ):
        if ckpt_dir and (Path(ckpt_dir) / FINAL_MARKER).exists():
            # Training had finished before the driver went away: hand the final model back again.
            ray.train.report({"final": 1}, checkpoint=checkpoint if ctx.get_world_rank() == 0 else None)
            return
        if ckpt_dir:
            resume_dir = str(Path(ckpt_dir) / "checkpoint")
        trainer, pair_ids = build_trainer(cfg, str(Path(work) / "hf"), use_cpu, cfg.get("callbacks"))
        for cb in _callbacks(trainer, cfg, pair_ids):
            trainer.add_callback(cb)
        trainer.train(resume_from_checkpoint=resume_dir)
        final = Path(work) / "final"
        metrics = {"final": 1, "step": trainer.state.global_step, "dtype": str(train_dtype(
            TrainConfig.model_validate(cfg["train"]), use_cpu))}
        if ctx.get_world_rank() == 0:
            _save_final(trainer, cfg["model_path"], final, cfg["train"]["merge"])
            atomic_write_json(final / "log_history.json", trainer.state.log_history)
            atomic_write_json(final / FINAL_MARKER, metrics)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(final))
        else:
            ray.train.report(metrics, checkpoint=None)


def _token_lengths(tokenizer_path: str, conversations: list[list[dict[str, str]]], batch: int = 256) -> list[int]:
    """Tokens of each chat as TRL's trainers tokenize it (the model's chat template, no generation prompt)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if not tokenizer.chat_template:
        raise StageInputError(
            f"{tokenizer_path}: the tokenizer has no chat template, which conversational training data needs "
            "(use an instruct/chat model, or add a chat template to its tokenizer_config.json)"
        )
    out: list[int] = []
    for i in range(0, len(conversations), batch):
        encoded = tokenizer.apply_chat_template(conversations[i : i + batch], tokenize=True, return_dict=True)
        out.extend(len(ids) for ids in encoded["input_ids"])
    return out


def check_lora_targets(cfg: TrainConfig, model_path: str) -> None:
    """LoRA target module names that the model does not have fail here, not in a Ray Train worker.

    The model is built on the meta device from its config: no weights are read.
    """
    if not cfg.lora.enabled:
        return
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    vision = is_vision_model(model_path)
    if cfg.lora.target_modules == "all-linear" and not vision:
        return
    with torch.device("meta"):
        auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        model = auto.from_config(AutoConfig.from_pretrained(model_path))
    if vision:  # the language model's targets, and the vision parts train.vision names (rl.vision)
        from rl.vision import fully_trained, lora_targets

        lora_targets(model, cfg.lora, cfg.vision)
        fully_trained(model, cfg.vision)
        return
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in names]
    if missing:
        raise StageInputError(
            f"train.lora.target_modules: {missing} are not modules of {model_path} "
            f"({type(model).__name__}); use names such as {sorted(n for n in names if n.endswith('proj'))[:8]} "
            "or all-linear"
        )


def check_data(cfg: TrainConfig, model_path: str, build_dir: StageDir, echo: bool = True) -> dict[str, Any]:
    """What can be known about the training set before Ray Train starts; bad input raises ``StageInputError``.

    Checks that the build finished and holds examples of the kind ``cfg.algorithm`` trains on, that
    the LoRA targets exist in the model and its tokenizer has a chat template, and
    measures every sequence TRL will train on (prompt + chosen and prompt + rejected, or the SFT
    messages) with the model's tokenizer (a vision-language model's processor, with the pairs' images
    from the run's image store beside the build). TRL cuts a longer sequence at ``max_length`` — the end of the
    answer, where it is decided — and drops an example whose prompt alone fills it; here such
    examples are refused (``too_long: error``) or left out and counted (``drop``), never cut. Also
    counts the groups that span more than one optimizer step and the padding the grouped order needs.
    """
    if not build_dir.done():
        raise StageInputError(f"{build_dir.path}: no finished build (run the build stage first)")
    build = build_dir.summary()
    if cfg.algorithm == "dpo" and build.get("kind") != "pairs":
        raise StageInputError(
            f"train.algorithm dpo needs preference pairs; {build_dir.path} holds {build.get('kind')} "
            "(set train.algorithm: sft, or a pair builder)"
        )
    if not build.get("pairs_out"):
        raise StageInputError(f"{build_dir.path} holds no training examples (see its _SUCCESS.json)")
    check_lora_targets(cfg, model_path)
    rows = build_dir.read().to_pylist()
    if "messages" in rows[0]:
        convs = [[r["messages"]] for r in rows]
    else:
        convs = [[r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]] for r in rows]
    if is_vision_model(model_path):  # the processor's template, each image as many tokens as it becomes
        from rl.vision import token_lengths

        flat = token_lengths(model_path, rows, convs, ImageStore(store_location(build_dir.path.parent)))
    else:
        flat = _token_lengths(model_path, [c for cs in convs for c in cs])
    longest, it = [], iter(flat)
    for cs in convs:
        longest.append(max(next(it) for _ in cs))
    over = [r["pair_id"] for r, n in zip(rows, longest, strict=True) if n > cfg.max_length]
    noun = "examples" if "messages" in rows[0] else "pairs"
    if over:
        what = (
            f"train.max_length {cfg.max_length}: {len(over)} of {len(rows)} {noun} are longer "
            f"(longest {max(longest)} tokens); TRL would cut off the end of their answers"
        )
        if cfg.too_long == "error" or len(over) == len(rows):
            raise StageInputError(
                f"{what}. Raise train.max_length to {max(longest)} or more, or set train.too_long=drop "
                "to train without them (counted)"
            )
        if echo:
            print(f"[train] warning: {what}; left out (train.too_long=drop)", file=sys.stderr)
    kept = [r for r, n in zip(rows, longest, strict=True) if n <= cfg.max_length]
    report: dict[str, Any] = {
        "examples": len(kept),
        "too_long_dropped": len(over),
        "longest_tokens": max(longest),
        "max_length": cfg.max_length,
        "exclude": over,
    }
    if cfg.group_pairs:
        sampler = GroupedWindowSampler([r["group"] for r in kept], cfg.global_batch, cfg.seed)
        report.update(
            groups=len(sampler.groups),
            groups_split=sampler.split_groups,
            padding=sampler.padding,
            steps_per_epoch=len(sampler) // cfg.global_batch,
        )
        if sampler.split_groups and echo:
            print(
                f"[train] {sampler.split_groups} of {len(sampler.groups)} groups are larger than an optimizer "
                f"step ({cfg.global_batch} {noun}); each is trained over consecutive steps",
                file=sys.stderr,
            )
    return report


def sft_first_config(cfg: TrainConfig) -> TrainConfig:
    """The SFT run that ``train.sft_first`` puts before DPO: same model, LoRA and batch, its own epochs and lr."""
    assert cfg.sft_first is not None
    return cfg.model_copy(
        update={
            "algorithm": "sft",
            "sft_beta": 0.0,
            "sft_first": None,
            "epochs": cfg.sft_first.epochs,
            "lr": cfg.sft_first.lr or cfg.lr,
            "grad_accum": cfg.sft_first.grad_accum or cfg.grad_accum,
            "max_steps": -1,
            "merge": True,  # DPO starts from the merged model, which is also its reference
        }
    )


def train_fingerprint(cfg: TrainConfig, model_path: str, build_dir: StageDir) -> dict[str, Any]:
    """The settings and inputs that shape the trained model (the build by its own fingerprint)."""
    stage_file = build_dir.path / "_stage.json"
    try:
        build = read_json(stage_file)
    except FileNotFoundError:
        build = None
    return {"train": cfg.model_dump(mode="json"), "model": model_path, "build": build}


def make_trainer(loop: Any, loop_cfg: dict[str, Any], cfg: TrainConfig, storage: Location) -> Any:
    """A ``TorchTrainer`` running ``loop`` on ``cfg.num_workers`` workers, checkpoints under ``storage/ray``.

    The same (storage, name) resumes a run whose driver died. ``storage`` may be on object storage.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        loop,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            **_storage_args(storage),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )


def _storage_args(storage: Location) -> dict[str, Any]:
    if isinstance(storage, ObjectPath):
        fs, inner = filesystem(storage)
        return {"storage_path": inner, "storage_filesystem": fs}
    return {"storage_path": str(storage.resolve())}


def publish_final(checkpoint: Any, out: Path) -> dict[str, Any]:
    """Copy the final checkpoint's model, adapter and log into ``out`` (each replaced whole); its metrics."""
    with checkpoint.as_directory() as final:
        for name in ("model", "adapter", "log_history.json"):
            src = Path(final) / name
            if not src.exists():
                continue
            dst = out / name
            tmp = out / f".{name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp)
            if dst.is_dir():
                shutil.rmtree(dst)
            os.replace(tmp, dst)
        return json.loads((Path(final) / FINAL_MARKER).read_text())


def run_train(
    cfg: TrainConfig,
    model_path: str,
    build_dir: StageDir,
    out_dir: str | os.PathLike[str],
    overwrite: bool = False,
    callbacks: list | None = None,
    report: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    checkpoints: Location | None = None,
) -> dict[str, Any]:
    """Train on the build stage's output; the final model lands in ``out_dir/model``.

    Ray Train's checkpoints go under ``checkpoints`` (default ``out_dir``), which may be on object storage.

    A finished run is kept; a run stopped part way resumes from its last checkpoint. Needs Ray
    initialised. ``callbacks`` are extra ``transformers.TrainerCallback`` objects for the workers;
    ``report`` is ``check_data``'s (computed here when not given); ``tags`` label the Ray metrics
    (``datagen.metrics.stage_tags``; default: from ``out_dir``'s path). With ``sft_first`` the SFT run
    goes to ``out_dir/sft`` (resumable on its own) and DPO starts from ``out_dir/sft/model``.
    """
    out = StageDir(out_dir)
    fingerprint = train_fingerprint(cfg, model_path, build_dir)
    if out.done() and not overwrite:
        out.check(fingerprint)
        return out.summary()
    if report is None:
        report = check_data(cfg, model_path, build_dir)
    build = build_dir.summary()
    out.start(fingerprint, overwrite=overwrite)
    tags = tags or stage_tags(out.path)
    sft_summary = None
    if cfg.sft_first is not None:
        sft_cfg = sft_first_config(cfg)
        sft_tags = {**tags, "stage": f"{tags['stage']}/sft"}
        sft_summary = run_train(
            sft_cfg, model_path, build_dir, out.path / "sft", False, callbacks, report, sft_tags,
            checkpoints / "sft" if checkpoints is not None else None,
        )
        model_path = sft_summary["model"]
    loop_cfg = {
        "train": cfg.model_dump(mode="json"),
        "model_path": model_path,
        "exclude": report["exclude"],
        "data_files": [str(p) for p in build_dir.shard_paths()],
        "image_dir": str(store_location(build_dir.path.parent)),  # the run's images (RUN_DIR/images)
        "cpus_per_worker": cfg.cpus_per_worker,
        "log_samples": cfg.log_samples,
        "sample_log_dir": str((out.path / "samples").resolve()),
        "metrics_file": str((out.path / METRICS_FILE).resolve()),
        "metric_tags": tags,
        "callbacks": callbacks or [],
    }
    trainer = make_trainer(train_loop, loop_cfg, cfg, checkpoints if checkpoints is not None else out.path)
    start = time.perf_counter()
    with _step_bar(out.path / PROGRESS_FILE):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training ended without a final checkpoint")
    metrics = publish_final(result.checkpoint, out.path)
    history = out.path / "log_history.json"
    if history.exists():
        write_step_metrics(json.loads(history.read_text()), out.path / METRICS_FILE)
    summary = {
        "algorithm": cfg.algorithm,
        "steps": metrics["step"],
        "pairs": build["pairs_out"],
        "data": {k: v for k, v in report.items() if k != "exclude"},
        "seconds": round(time.perf_counter() - start, 2),
        "dtype": metrics.get("dtype"),
        "model": str(out.path / "model"),
        "adapter": str(out.path / "adapter") if cfg.lora.enabled else None,
    }
    if sft_summary is not None:
        summary["sft_first"] = {k: sft_summary[k] for k in ("steps", "seconds", "model")}
    out.mark_done(summary)
    return summary
