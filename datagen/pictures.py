"""The built-in picture questions (``prompts.builtin: pictures``): images drawn with Pillow, exact answers.

Four kinds, in turn: count the shapes in a picture (1-6 circles, squares and triangles);
name the colour of a shape (four lettered options); say which of two bars is taller (A left, B
right); read the digit drawn in the picture. Counts and digits are numbers; the colour and bar
questions are multiple choice and answered with a letter, as SCL's image benchmarks (ScienceQA,
MMBench) are. Everything is drawn from a seeded generator, so the set needs no download and is the
same everywhere; a problem's split depends on what it shows and asks alone (as the arithmetic
set's), so train and test never share one. The pictures are 96 x 96 PNG files held in memory
until the generate stage stores them (``datagen.images``).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from typing import Any

from datagen.config import PromptsConfig
from datagen.images import from_bytes
from datagen.prompts import PromptError, builtin
from datagen.records import Prompt

SIZE = 96
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
KINDS = ("count", "colour", "bars", "digit")
ANSWER_NUMBER = 'Give the final answer as "The answer is N."'
ANSWER_LETTER = 'Give the final answer as "The answer is X.", where X is the letter of your choice.'


def _shape(draw: Any, kind: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _png(draw_fn: Any) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIZE, SIZE), "white")
    draw_fn(ImageDraw.Draw(img))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _options(rng: random.Random, right: str, pool: list[str], k: int = 4) -> tuple[str, str]:
    """Lettered options ``(A) ... (B) ...`` with ``right`` among them, and its letter."""
    choices = rng.sample([c for c in pool if c != right], k - 1) + [right]
    rng.shuffle(choices)
    text = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return text, chr(65 + choices.index(right))


def picture_problem(rng: random.Random, kind: str) -> tuple[str, str, bytes, dict[str, Any]]:
    """(question, exact answer, PNG bytes, what the picture shows) for one problem of ``kind``."""
    if kind == "count":
        n = rng.randint(1, 6)
        cells = rng.sample(range(9), n)  # a 3 x 3 grid keeps shapes apart
        items = [(c, rng.choice(SHAPES), rng.choice(list(COLOURS))) for c in cells]

        def draw(d: Any) -> None:
            for cell, shape, colour in items:
                x, y = (cell % 3) * 32 + 5, (cell // 3) * 32 + 5
                _shape(d, shape, (x, y, x + 22, y + 22), COLOURS[colour])

        return f"How many shapes are in the image? {ANSWER_NUMBER}", str(n), _png(draw), {"items": items}
    if kind == "colour":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        options, letter = _options(rng, colour, list(COLOURS))
        png = _png(lambda d: _shape(d, shape, (20, 20, 76, 76), COLOURS[colour]))
        question = f"What colour is the {shape} in the image? {options}. {ANSWER_LETTER}"
        return question, letter, png, {"shape": shape, "colour": colour}
    if kind == "bars":
        left = rng.randrange(15, 86, 5)
        right = rng.choice([h for h in range(15, 86, 5) if abs(h - left) >= 10])  # 10 of 96 pixels apart
        colour = rng.choice(list(COLOURS))

        def draw(d: Any) -> None:
            d.rectangle((18, SIZE - 6 - left, 38, SIZE - 6), fill=COLOURS[colour])
            d.rectangle((58, SIZE - 6 - right, 78, SIZE - 6), fill=COLOURS[colour])

        question = f"Which bar in the image is taller? (A) the left bar (B) the right bar. {ANSWER_LETTER}"
        shown = {"left": left, "right": right, "colour": colour}
        return question, "A" if left > right else "B", _png(draw), shown
    digit, size = rng.randrange(10), rng.randrange(40, 72, 8)
    x, y = rng.randrange(36, 61, 4), rng.randrange(36, 61, 4)

    def draw(d: Any) -> None:
        from PIL import ImageFont

        d.text((x, y), str(digit), fill="black", font=ImageFont.load_default(size=size), anchor="mm")

    shown = {"digit": digit, "size": size, "at": (x, y)}
    return f"What digit is written in the image? {ANSWER_NUMBER}", str(digit), _png(draw), shown


def _split_of(kind: str, shown: dict[str, Any], question: str) -> str:
    # What the picture shows and what is asked decide the split: the same problem is never in both.
    key = f"{kind}\x1f{sorted(shown.items())}\x1f{question}".encode()
    return "test" if hashlib.sha256(key).digest()[0] < 51 else "train"  # ~20% test


@builtin("pictures")
def pictures(cfg: PromptsConfig, seed: int = 4321) -> Iterator[Prompt]:
    rng = random.Random(seed)
    seen: set[str] = set()
    count = tries = 0
    while count < cfg.size:
        tries += 1
        if tries > 100 * cfg.size:
            raise PromptError(f"builtin pictures: only {count} distinct {cfg.split} problems; lower prompts.size")
        kind = KINDS[tries % len(KINDS)]
        question, answer, png, shown = picture_problem(rng, kind)
        key = f"{kind}\x1f{sorted(shown.items())}\x1f{question}"
        if key in seen or _split_of(kind, shown, question) != cfg.split:
            continue
        seen.add(key)
        source = from_bytes(png, f"builtin pictures {kind}")
        yield Prompt(
            prompt_id=f"pic-{cfg.split}-{hashlib.sha256(key.encode()).hexdigest()[:12]}",
            messages=[{"role": "user", "content": question}],
            reference=answer,
            task="math",
            metadata={"kind": kind},
            images=(source.image_id,),
            image_sources=(source,),
            origin=f"builtin pictures {cfg.split} #{count + 1}",
        )
        count += 1
