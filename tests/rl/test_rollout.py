"""What a weight sync sends: the policy's merged weights in the engine's dtype, without needless copies."""

from __future__ import annotations

import safetensors.torch
import torch

from rl.rollout import merged_state_dict


def test_a_bfloat16_engine_gets_bfloat16_bytes_and_no_copies(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    state = merged_state_dict(model, "bfloat16")
    own = {t.data_ptr() for t in model.state_dict().values()}
    assert all(t.dtype == torch.bfloat16 and t.data_ptr() in own for t in state.values())  # the model's own tensors
    half = len(safetensors.torch.save(state))
    full = len(safetensors.torch.save(merged_state_dict(model, "float32")))
    assert abs(half / full - 0.5) < 0.01


def test_the_lora_delta_is_merged_in_the_engines_dtype(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.lora_A["default"].weight.dtype == torch.float32  # the trained weights stay float32
    with torch.no_grad():
        q.lora_B["default"].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    state = merged_state_dict(model, "bfloat16")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not any("lora" in k or "base_layer" in k for k in state)
    delta = (q.lora_B["default"].weight @ q.lora_A["default"].weight) * 2.0  # alpha / r
    want = (q.base_layer.weight.float() + delta).to(torch.bfloat16)
    assert state[name].dtype == torch.bfloat16
    assert (state[name].float() - want.float()).abs().max() <= 2 ** -6 * want.float().abs().max()
