"""DPO and SFT of a tiny random vision-language model (Idefics3) through TRL's vision collators:
pictures from the run's store, LoRA on the language model only, the tower frozen, the projector at its
own learning rate; and the parts of LLaVA, Idefics3 and Qwen2-VL found by name."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from rl_rows import judged_row, write_judged

from datagen.images import ImageStore, from_bytes, store_location
from datagen.shards import StageDir
from datagen.vision import VisionPrompter
from rl.build import run_build
from rl.config import BuildConfig, TrainConfig
from rl.train import build_trainer, check_data
from rl.vision import vision_parts


def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


def _build(tmp: Path, builder: str = "scl") -> StageDir:
    """A run dir with two pictures in its store and judged image rows; the build beside them."""
    sources = [from_bytes(_png(c)) for c in ("red", "blue", "green")]
    ImageStore(store_location(tmp)).put(sources)
    rows = []
    for i, source in enumerate(sources):
        q = [{"role": "user", "content": f"What colour is the square? ({i})"}]
        if builder == "scl":
            row = judged_row(f"p{i}", 0, messages=q, attempt1="Blue.", attempt2="The answer is red.",
                             verifier_score1=0.0, verifier_score2=1.0)  # fmt: skip
        else:
            row = judged_row(f"p{i}", 0, messages=q, attempt1="Blue.", feedbacks=["Wrong. Revision is needed."],
                             revisions=["Red."])  # fmt: skip
        rows.append({**row, "images": [source.image_id]})
    out = StageDir(tmp / "build")
    run_build(BuildConfig(builder=builder), write_judged(tmp / "judge", rows), out, echo=False)
    return out


def _loop_cfg(model: Path, build: StageDir, train: TrainConfig) -> dict:
    return {
        "train": train.model_dump(mode="json"),
        "model_path": str(model),
        "data_files": [str(p) for p in build.shard_paths()],
        "image_dir": str(store_location(build.path.parent)),
    }


def test_dpo_lora_on_the_language_model_tower_frozen_projector_at_its_rate(tmp_path, tiny_vlm_dir):
    build = _build(tmp_path)
    train = TrainConfig(
        batch_size=3, max_steps=3, lr=1e-3, log_every=1, scheduler="constant", max_length=256,
        vision={"projector": "full", "projector_lr": 5e-2},
    )  # fmt: skip
    trainer, _ = build_trainer(_loop_cfg(tiny_vlm_dir, build, train), str(tmp_path / "hf"), use_cpu=True)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape == (6, 1, 3, 32, 32)  # each pair's picture, for chosen and rejected
    assert (batch["input_ids"] == model.config.image_token_id).sum() == 6 * 4
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(".text_model." in n for n in lora)
    tower = {n: p.detach().clone() for n, p in model.named_parameters() if ".vision_model." in n}
    projector = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and ".connector." in n}
    assert tower and projector and not any(model.get_parameter(n).requires_grad for n in tower)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5) and all(math.isfinite(x) for x in losses)
    rates = {g["initial_lr"] for g in trainer.optimizer.param_groups if g["params"]}
    assert rates == {1e-3, 5e-2}
    assert all(torch.equal(model.get_parameter(n), p) for n, p in tower.items())
    assert any(not torch.equal(model.get_parameter(n), p) for n, p in projector.items())


def test_sft_on_image_chains(tmp_path, tiny_vlm_dir):
    build = _build(tmp_path, builder="selfee")
    train = TrainConfig(algorithm="sft", batch_size=3, max_steps=2, lr=1e-3, log_every=1, max_length=256)
    trainer, _ = build_trainer(_loop_cfg(tiny_vlm_dir, build, train), str(tmp_path / "hf"), use_cpu=True)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape[0] == 3 and (batch["labels"] != -100).any()
    trainer.train()
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_lengths_count_the_image_tokens_and_parts_are_found(tmp_path, tiny_vlm_dir):
    build = _build(tmp_path)
    report = check_data(TrainConfig(max_length=256), str(tiny_vlm_dir), build, echo=False)
    pair = build.read().to_pylist()[0]
    full = pair["prompt"] + pair["chosen"]
    expected = VisionPrompter(str(tiny_vlm_dir)).length(full, [(48, 40)], generation_prompt=False)
    assert report["longest_tokens"] >= expected > 7


@pytest.mark.parametrize(
    "config, extra, parts",
    [
        ("LlavaConfig", {}, ("model.language_model", ("model.vision_tower",), ("model.multi_modal_projector",))),
        # Idefics3's default pad id lies outside its default vocabulary
        ("Idefics3Config", {"pad_token_id": 2}, ("model.text_model", ("model.vision_model",), ("model.connector",))),
        ("Qwen2VLConfig", {}, ("model.language_model", ("model.visual",), ("model.visual.merger",))),
    ],
)
def test_the_parts_of_real_architectures_are_found(config, extra, parts):
    """The papers' LLaVA-1.5 (7B), Idefics3 (8B) and Qwen2-VL (7B) by their default configs, on the meta device."""
    import transformers
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    from rl.config import LoraConfig, VisionTrainConfig
    from rl.vision import fully_trained, lora_targets

    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(getattr(transformers, config)(**extra))
    found = vision_parts(model)
    assert (found.language, found.towers, found.projectors) == parts
    vision = VisionTrainConfig(projector="full")
    targets = lora_targets(model, LoraConfig(), vision)
    assert targets and all(t.startswith(parts[0] + ".") for t in targets)
    assert fully_trained(model, vision) == list(parts[2])
    peft = get_peft_model(model, PeftLora(target_modules=targets, modules_to_save=fully_trained(model, vision)))
    trained = {n for n, p in peft.named_parameters() if p.requires_grad}
    assert trained and not any(".vision_tower." in n or (".visual." in n and ".merger." not in n) for n in trained)
