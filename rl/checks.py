"""What can be known about a training run before Ray Train starts: the build's kind and size, every
sequence's length under the model's tokenizer, the LoRA targets. Bad input raises ``StageInputError``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from datagen.images import ImageStore, store_location
from datagen.shards import StageDir, StageInputError
from datagen.vision import is_vision_model
from rl.config import TrainConfig
from rl.sampler import GroupedWindowSampler


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
