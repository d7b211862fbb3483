"""Vision-language models: what the generate stage needs to prompt one with images.

A model is a vision-language model when its config has a ``vision_config`` (LLaVA, Qwen2-VL,
MiniCPM-V's and most others' HF configs do). Such a model is prompted through its own processor:
the processor's chat template renders the conversation with image parts (``vision_messages``: the
images before the first user text), its tokenizer turns that into token ids with one placeholder
per image, and vLLM expands each placeholder into the image's tokens (``multi_modal_data``). The
number of tokens an image becomes is the processor's (``image_tokens``), so a prompt is measured
against the context before it is sent, images included.

Prompts with images given to a text-only model, and prompts whose text and images do not fit the
context, are refused here before any work starts, naming the file and line (or row).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from datagen.prompts import PromptError
from datagen.records import Prompt, vision_messages


class VisionInputError(PromptError):
    """Image prompts the model cannot take; the message names the prompts and where they came from."""


@functools.cache
def is_vision_model(model_path: str) -> bool:
    """Whether the model at ``model_path`` (a folder or hub name) takes images: its config has a vision part.

    A folder's config.json is read as JSON: transformers' config classes import torch, three seconds of a
    driver's start that planning a stage does not otherwise need. A hub name goes through ``AutoConfig``.
    """
    local = Path(model_path, "config.json")
    if local.is_file():
        try:
            return bool(json.loads(local.read_text()).get("vision_config"))
        except (OSError, ValueError, AttributeError):  # AttributeError: not a JSON object
            return False
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        return False
    return getattr(config, "vision_config", None) is not None


class VisionPrompter:
    """A vision-language model's processor: chat template, token ids and image token counts."""

    def __init__(self, model_path: str):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        self._tokens: dict[tuple[int, int], int] = {}

    def encode(
        self,
        conversation: list[dict[str, Any]],
        n_images: int = 0,
        continue_final: bool = False,
        generation_prompt: bool = True,
    ) -> list[int]:
        """Token ids of the conversation with one placeholder per image (as vLLM takes them).

        ``continue_final`` extends the last (assistant) message; ``generation_prompt=False`` renders a
        finished chat (as training sees it) instead of asking for the next turn."""
        text = self.processor.apply_chat_template(
            vision_messages(conversation, n_images),
            tokenize=False,
            add_generation_prompt=generation_prompt and not continue_final,
            continue_final_message=continue_final,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def image_tokens(self, width: int, height: int) -> int:
        """How many tokens an image of this size becomes in the model's input (its placeholder included)."""
        key = (width, height)
        if key not in self._tokens:
            counted = getattr(self.processor, "_get_num_multimodal_tokens", None)
            tokens = None
            if counted is not None:
                try:
                    tokens = counted(image_sizes=[[height, width]]).num_image_tokens[0]
                except (AttributeError, NotImplementedError, TypeError):
                    tokens = None
            if tokens is None:  # process a blank picture of that size and count the image tokens
                from PIL import Image

                token = self.processor.image_token
                out = self.processor(text=token, images=[Image.new("RGB", (width, height))])
                tokens = list(out["input_ids"][0]).count(self.tokenizer.convert_tokens_to_ids(token))
            self._tokens[key] = int(tokens)
        return self._tokens[key]

    def length(self, conversation: list[dict[str, Any]], sizes: list[tuple[int, int]], **encode: Any) -> int:
        """Tokens of the conversation as the model sees it, each image expanded (``encode``'s options)."""
        ids = self.encode(conversation, len(sizes), **encode)
        return len(ids) + sum(self.image_tokens(w, h) - 1 for w, h in sizes)


def check_image_prompts(prompts: list[Prompt], model: str, model_path: str) -> None:
    """Refuse prompts with images for a model that takes none, naming the first few and where they are."""
    with_images = [p for p in prompts if p.images]
    if not with_images or is_vision_model(model_path):
        return
    shown = "; ".join(f"{p.origin or p.prompt_id} ({len(p.images)} image(s))" for p in with_images[:3])
    more = f" and {len(with_images) - 3} more" if len(with_images) > 3 else ""
    raise VisionInputError(
        f"{len(with_images)} prompt(s) carry images, but model {model!r} is text-only (its config has no "
        f"vision_config): {shown}{more}. Use a vision-language model (e.g. llava-hf/llava-1.5-7b-hf) or "
        "prompts without images."
    )


def max_images(prompts: list[Prompt]) -> int:
    """The most images any one prompt has (what the engine must be ready to take at once)."""
    return max((len(p.images) for p in prompts), default=0)
