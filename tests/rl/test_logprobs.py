"""The trainer's token log-probabilities (``rl.logprobs``) against ``rl.losses.token_logps`` over the full
forward's logits, on the tiny model."""

from __future__ import annotations

import pytest
import torch

from rl.logprobs import token_logprobs
from rl.losses import token_logps


def test_completion_logprobs_equal_the_full_forward(tiny_model_dir):
    """The LM head applied only where completion tokens are predicted gives the full forward's numbers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    seqs = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14, 15]), ([16], [17])]
    logp, mask, ent = token_logprobs(model, seqs, 0, torch.device("cpu"), entropy=True)
    for i, (x, y) in enumerate(seqs):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([x + y])).logits
        labels = torch.tensor([[-100] * len(x) + y])  # the prompt is not scored
        want = token_logps(logits, labels)[0][len(x) - 1 :].tolist()
        assert logp[i][mask[i] > 0].tolist() == pytest.approx(want, abs=1e-5)
        assert all(e > 0 for e in ent[i][mask[i] > 0].tolist())
        assert logp[i][mask[i] == 0].abs().sum() == 0  # 0 outside the completion
    assert mask.sum().item() == 7
    logp.sum().backward()  # differentiable through the scatter
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
