"""Prompts with images: reading them from files, Parquet and HF datasets, the store, and bad input refused."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen.config import GenerateConfig, PromptsConfig
from datagen.generate import plan_generate
from datagen.images import ImageError, ImageStore, read_images
from datagen.prompts import PromptError, load_prompts
from datagen.records import Prompt, image_id, vision_messages


def png(colour: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pictures(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name, colour in (("red", "red"), ("blue", "blue")):
        (tmp_path / "imgs" / f"{name}.png").write_bytes(png(colour))
    return tmp_path / "imgs"


def test_jsonl_paths_relative_to_the_file_and_each_image_stored_once(tmp_path, pictures):
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt_id": "a", "prompt": "What colour?", "image": "imgs/red.png", "reference": "red"},
            {"prompt_id": "b", "prompt": "Compare.", "images": ["imgs/red.png", str(pictures / "blue.png")]},
            {"prompt_id": "c", "prompt": "No picture."},
        ],
    )
    a, b, c = load_prompts(PromptsConfig(path=str(f)))
    red, blue = image_id(png("red"), "png"), image_id(png("blue"), "png")
    assert (a.images, b.images, c.images) == ((red,), (red, blue), ())
    assert a.metadata == {} and a.origin == f"{f}:1" and a.image_sources[0].path == str(pictures / "red.png")
    store = ImageStore(tmp_path / "run" / "images")
    sources = [s for p in (a, b, c) for s in p.image_sources]
    assert store.put(sources) == 2 and store.put(sources) == 0  # the same picture twice is one file
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == sorted([red, blue])
    assert store.read(red) == png("red") and store.picture(blue).size == (40, 30)
    row = a.to_row()
    assert row["images"] == [red] and Prompt.from_row(row) == a  # rows carry ids, never pixels


def test_parquet_bytes_and_hf_image_columns(tmp_path):
    import datasets

    table = pa.table({"prompt_id": ["a"], "prompt": ["Colour?"], "image": [png("green")]})
    pq.write_table(table, tmp_path / "p.parquet")
    (a,) = load_prompts(PromptsConfig(path=str(tmp_path / "p.parquet")))
    assert a.images == (image_id(png("green"), "png"),) and a.image_sources[0].data == png("green")

    (tmp_path / "blue.png").write_bytes(png("blue"))
    ds = datasets.Dataset.from_dict(
        {"prompt_id": ["x", "y"], "prompt": ["One?", "Two?"], "images": [[str(tmp_path / "blue.png")], []]},
        features=datasets.Features(
            {
                "prompt_id": datasets.Value("string"),
                "prompt": datasets.Value("string"),
                "images": datasets.List(datasets.Image()),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    x, y = load_prompts(PromptsConfig(path=str(tmp_path / "hf")))
    # the stored file's own bytes, not a re-encoded picture: the id is the original's
    assert x.images == (image_id(png("blue"), "png"),) and y.images == ()


@pytest.mark.parametrize(
    "value, needle",
    [
        ("imgs/nope.png", "cannot read"),
        ("notes.txt", "not a readable image"),
        ("cut.png", "not a readable image"),
        ("https://example.com/cat.png", "a URL"),
        (7, "must be a file path, bytes"),
        (["imgs/red.png", "imgs/nope.png"], "image 2 of 2"),
        ({"bytes": None, "path": None}, "neither bytes nor a path"),
    ],
)
def test_bad_images_name_file_line_and_field(tmp_path, pictures, value, needle):
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "cut.png").write_bytes(png("red", (200, 200))[:120])  # a truncated file
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt_id": "ok", "prompt": "fine"}, {"prompt_id": "b", "prompt": "x", "images": value}],
    )
    with pytest.raises(PromptError, match=rf"{f}:2: field 'images': .*{needle}"):
        load_prompts(PromptsConfig(path=str(f)))


def test_store_refuses_an_unknown_id(tmp_path):
    store = ImageStore(tmp_path / "images")
    with pytest.raises(ImageError, match="not in the image store"):
        store.read("0" * 64 + ".png")
    assert read_images(None, None) == () and read_images([], None) == ()


def test_images_go_before_the_first_user_text():
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is it?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
    ]
    out = vision_messages(chat, 2)
    assert out[0]["content"] == [{"type": "text", "text": "Be brief."}]
    assert [p["type"] for p in out[1]["content"]] == ["image", "image", "text"]
    assert out[3]["content"] == [{"type": "text", "text": "Sure?"}]
    assert vision_messages(chat, 0)[1]["content"] == [{"type": "text", "text": "What is it?"}]


def test_image_prompts_refused_for_a_text_only_model(tmp_path, pictures):
    import transformers

    transformers.LlamaConfig(num_hidden_layers=1).save_pretrained(tmp_path / "textmodel")
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt_id": "a", "prompt": "x"}, {"prompt_id": "b", "prompt": "y", "image": "imgs/red.png"}],
    )
    with pytest.raises(PromptError, match=rf"1 prompt\(s\) carry images, but model .* is text-only.*{f}:2"):
        plan_generate(PromptsConfig(path=str(f)), GenerateConfig(), str(tmp_path / "textmodel"), str(tmp_path), 0)


def test_too_many_image_tokens_for_the_context_refused(tmp_path, pictures, tiny_vlm_dir):
    # the tiny model turns a picture into 7 tokens: three of them and 8 new tokens leave a 36-token context short
    rows = [
        {"prompt_id": "fits", "prompt": "What colour?", "image": "imgs/red.png"},
        {"prompt_id": "big", "prompt": "Compare them.", "images": ["imgs/red.png", "imgs/blue.png", "imgs/red.png"]},
    ]
    f = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = GenerateConfig(max_tokens=8, engine={"max_model_len": 36})
    with pytest.raises(PromptError, match=rf"1 prompt\(s\) do not fit .* big \(\d+ tokens, 3 image\(s\); {f}:2\)"):
        plan_generate(PromptsConfig(path=str(f)), cfg, str(tiny_vlm_dir), str(tmp_path), 0)
    plan = plan_generate(PromptsConfig(path=str(f), limit=1), cfg, str(tiny_vlm_dir), str(tmp_path), 0)
    assert plan.prompts[0].images and "images_sha256" in plan.fingerprint


def test_a_folder_is_told_vision_or_text_as_autoconfig_tells_it(tmp_path, tiny_model_dir, tiny_vlm_dir):
    # is_vision_model reads a folder's config.json itself (no torch); AutoConfig's answer is the reference
    import transformers

    from datagen.vision import is_vision_model

    transformers.LlavaConfig().save_pretrained(tmp_path / "llava")
    for folder in (tiny_model_dir, tiny_vlm_dir, tmp_path / "llava"):
        config = transformers.AutoConfig.from_pretrained(folder)
        assert is_vision_model(str(folder)) == (getattr(config, "vision_config", None) is not None), folder
    assert is_vision_model(str(tiny_vlm_dir)) and not is_vision_model(str(tiny_model_dir))
