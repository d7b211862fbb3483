"""The built-in picture questions: the answers agree with what is drawn; splits never share a problem."""

from __future__ import annotations

import io
import re
from collections import Counter

from PIL import Image

from datagen.config import PromptsConfig
from datagen.pictures import COLOURS, SIZE
from datagen.prompts import load_prompts


def picture(p) -> Image.Image:
    return Image.open(io.BytesIO(p.image_sources[0].read())).convert("RGB")


def option(question: str, letter: str) -> str:
    return dict(re.findall(r"\(([A-D])\) ([a-z ]+?)(?= \(|\.)", question))[letter]


def test_answers_agree_with_the_pixels():
    prompts = load_prompts(PromptsConfig(builtin="pictures", size=80))
    assert Counter(p.metadata["kind"] for p in prompts).keys() == {"count", "colour", "bars", "digit"}
    for p in prompts:
        img, question, ref = picture(p), p.messages[0]["content"], p.reference
        assert img.size == (SIZE, SIZE) and p.task == "math" and len(p.images) == 1
        kind = p.metadata["kind"]
        if kind == "count":  # one shape per 32 x 32 cell, centred on (16, 16) of its cell
            filled = sum(
                img.getpixel((cx * 32 + 16, cy * 32 + 16)) != (255, 255, 255) for cx in range(3) for cy in range(3)
            )
            assert str(filled) == ref
        elif kind == "colour":
            assert COLOURS[option(question, ref)] == img.getpixel((SIZE // 2, SIZE // 2 + 10))
        elif kind == "bars":
            heights = [sum(img.getpixel((x, y)) != (255, 255, 255) for y in range(SIZE)) for x in (28, 68)]
            assert ref == ("A" if heights[0] > heights[1] else "B") and heights[0] != heights[1]
        else:
            assert ref in "0123456789" and any(px == (0, 0, 0) for px in img.getdata())


def test_deterministic_and_splits_disjoint():
    train = load_prompts(PromptsConfig(builtin="pictures", size=60))
    again = load_prompts(PromptsConfig(builtin="pictures", size=60))
    test = load_prompts(PromptsConfig(builtin="pictures", size=30, split="test"))
    assert [p.images for p in train] == [p.images for p in again] and [p.prompt_id for p in train] == [
        p.prompt_id for p in again
    ]
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in test}
    assert not {(p.messages[0]["content"], p.images) for p in train} & {
        (p.messages[0]["content"], p.images) for p in test
    }
