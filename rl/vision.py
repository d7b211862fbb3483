"""Vision-language models in DPO/SFT: the parts of a VLM, what trains, and pictures for TRL's collators.

TRL's trainers take a vision-language model with its processor: a dataset with an ``images`` column
makes them use their vision collators (``DataCollatorForVisionPreference`` for DPO,
``DataCollatorForVisionLanguageModeling`` for SFT), which render the chat with image parts before
the first user text (the placement of ``datagen.records.vision_messages``) and turn the pictures
into pixel values batch by batch. The training set holds image *ids*; ``with_pictures`` puts the
decoded pictures from the run's image store into each batch as it is made, so no picture is copied
per pair and none is held for the whole set.

What trains (``train.vision``): LoRA goes on the language model's modules only; the vision tower is
frozen (``tower: frozen``, the default), gets the same LoRA adapters (``lora``) or trains in full
(``full``); the projector between them is frozen or trains in full, at its own learning rate if
``projector_lr`` is set (SIMA/LLaVA-1.5 train it at 2e-5 beside LoRA at 1e-7). The parts are found by
the names transformers gives them (LLaVA's ``language_model``, ``vision_tower`` and
``multi_modal_projector``; Idefics3's ``text_model``, ``vision_model`` and ``connector``; Qwen2-VL's
``visual`` and ``merger``, ...); a model whose parts are not found is refused before training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from datagen.images import ImageStore
from datagen.shards import StageInputError
from rl.config import LoraConfig, VisionTrainConfig

LANGUAGE_NAMES = ("language_model", "text_model", "llm")
TOWER_NAMES = ("vision_tower", "visual", "vision_model", "vpm", "vision_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "merger", "resampler", "connector")


@dataclass(frozen=True)
class VisionParts:
    """Module names (as ``named_modules`` gives them) of a vision-language model's three parts."""

    language: str
    towers: tuple[str, ...]
    projectors: tuple[str, ...]


def _outermost(names: list[str], wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The modules whose own name is one of ``wanted``, leaving out those inside another match."""
    hits = sorted(n for n in names if n.rsplit(".", 1)[-1] in wanted)
    return tuple(n for n in hits if not any(n.startswith(f"{o}.") for o in hits if o != n))


def vision_parts(model: torch.nn.Module) -> VisionParts:
    """Find the language model, the vision tower(s) and the projector(s) of a vision-language model."""
    names = [n for n, _ in model.named_modules() if n]
    language = _outermost(names, LANGUAGE_NAMES)
    towers, projectors = _outermost(names, TOWER_NAMES), _outermost(names, PROJECTOR_NAMES)
    if len(language) != 1 or not towers:
        raise StageInputError(
            f"{type(model).__name__}: cannot tell its language model and vision tower apart (looked for one of "
            f"{LANGUAGE_NAMES} and of {TOWER_NAMES}); train.vision needs them to choose what trains"
        )
    return VisionParts(language[0], towers, projectors)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def lora_targets(model: torch.nn.Module, lora: LoraConfig, vision: VisionTrainConfig) -> list[str]:
    """Full names of the linear modules that get LoRA adapters: the language model's (and the tower's
    with ``tower: lora``) whose own name is a target, or every linear one for ``all-linear``; never the
    output head (DPO reads its weight directly)."""
    parts = vision_parts(model)
    scope = (parts.language, *(parts.towers if vision.tower == "lora" else ()))
    skip = parts.projectors if vision.tower == "lora" else ()  # a projector inside a tower (Qwen2-VL) is not LoRA'd
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or not _under(name, scope) or _under(name, skip):
            continue
        if lora.target_modules == "all-linear" or name.rsplit(".", 1)[-1] in lora.target_modules:
            out.append(name)
    if not out:
        raise StageInputError(
            f"train.lora.target_modules: {lora.target_modules} match no linear module of the language model "
            f"({parts.language}) of {type(model).__name__}"
        )
    return out


def fully_trained(model: torch.nn.Module, vision: VisionTrainConfig) -> list[str]:
    """Names of the vision parts that train in full (beside LoRA: PEFT's ``modules_to_save``)."""
    parts = vision_parts(model)
    full = list(parts.towers) if vision.tower == "full" else []
    if vision.projector == "full":
        full += [p for p in parts.projectors if not _under(p, tuple(full))]
    return full


def freeze(model: torch.nn.Module, vision: VisionTrainConfig) -> None:
    """Without LoRA: the vision parts not set to train are frozen (the language model trains in full)."""
    parts = vision_parts(model)
    trained = tuple(fully_trained(model, vision))
    for name, param in model.named_parameters():
        if _under(name, parts.towers + parts.projectors) and not _under(name, trained):
            param.requires_grad_(False)


def split_lr(optimizer: torch.optim.Optimizer, params: set[int], lr: float) -> None:
    """Move ``params`` (by ``id``) out of the optimizer's groups into groups of their own with learning
    rate ``lr``, each keeping the rest of its old group's settings (weight decay)."""
    extra = []
    for group in optimizer.param_groups:
        moved = [p for p in group["params"] if id(p) in params]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in params]
            extra.append({**group, "params": moved, "lr": lr})
    for group in extra:
        optimizer.add_param_group(group)


def projector_params(model: torch.nn.Module, names: list[str]) -> set[int]:
    """Ids of the trainable parameters under the projector modules (by their own names, so PEFT's
    wrapping and its trained copies match too)."""
    last = tuple(n.rsplit(".", 1)[-1] for n in names)
    return {id(p) for n, p in model.named_parameters() if p.requires_grad and any(f".{m}." in f".{n}" for m in last)}


def load_model(model_path: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)


def load_processor(model_path: str) -> Any:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def with_pictures(collator: Callable[[list[dict[str, Any]]], Any], store: ImageStore) -> Callable[..., Any]:
    """TRL's collator with each example's image ids replaced by the pictures, decoded as the batch is made."""

    def collate(examples: list[dict[str, Any]]) -> Any:
        for e in examples:
            e["images"] = store.pictures(e.get("images") or [])
        return collator(examples)

    return collate


def token_lengths(
    model_path: str, rows: list[dict[str, Any]], conversations: list[list[Any]], store: ImageStore | None
) -> list[int]:
    """Tokens of each chat of each row as TRL's vision collators make it: the processor's template, the
    row's images expanded to the tokens they become. One list, the rows' chats in order."""
    from datagen.vision import VisionPrompter

    prompter = VisionPrompter(model_path)
    out = []
    for row, chats in zip(rows, conversations, strict=True):
        ids = row.get("images") or []
        if ids and store is None:
            raise StageInputError(f"pair {row['pair_id']!r} has images but there is no image store to read them from")
        sizes = [pic.size for pic in store.pictures(ids)] if ids and store is not None else []
        out += [prompter.length(chat, sizes, generation_prompt=False) for chat in chats]
    return out
