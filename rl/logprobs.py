"""Token log-probabilities of completions under a causal LM, as the RL trainer needs them.

For a sequence x + y (prompt x, completion y) the log-probability of completion token t is

    logp_t = log softmax(W h_{|x|+t-1})[y_t]        (h: the decoder's hidden states, W: the LM head)

the quantity ``rl.losses.token_logps`` computes from full logits; here the LM head runs only at the
positions that predict completion tokens, because a prompt's logits over the vocabulary are never
needed and they are most of the cost (and memory) for a long second-turn prompt.
"""

from __future__ import annotations

from typing import Any

import torch

Sequence = tuple[list[int], list[int]]  # (prompt token ids, completion token ids)


def pad_batch(seqs: list[Sequence], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention, mask) for a batch of x + y, right-padded with ``pad_id``; ``mask`` (B, L-1) is 1 at
    the positions that predict a token of y.

    >>> ids, attn, mask = pad_batch([([5, 6], [7]), ([8], [9, 10])], 0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 9, 10]], [[0.0, 1.0], [1.0, 1.0]])
    """
    length = max(len(x) + len(y) for x, y in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), length), dtype=torch.long)
    mask = torch.zeros((len(seqs), length - 1), dtype=torch.float32)
    for i, (x, y) in enumerate(seqs):
        ids[i, : len(x) + len(y)] = torch.tensor(x + y)
        attn[i, : len(x) + len(y)] = 1
        mask[i, len(x) - 1 : len(x) + len(y) - 1] = 1.0  # positions that predict y's tokens
    return ids, attn, mask


def token_logprobs(
    model: Any, seqs: list[Sequence], pad_id: int, device: Any, entropy: bool = False, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logp, mask, entropy or None), each (B, L-1): each completion token's log-probability given what came
    before it, 0 elsewhere; the entropy of the next-token distribution at the same positions, without a
    gradient. Differentiable in ``model``'s parameters (a PEFT model's base runs with its adapters).

    ``temperature``: of the distribution softmax(logits / temperature), the one a sampler at that
    temperature draws from.
    """
    ids, attn, mask = pad_batch(seqs, pad_id)
    ids, attn, mask = ids.to(device), attn.to(device), mask.to(device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state[:, :-1]
    where = mask.bool()
    logits = base.get_output_embeddings()(hidden[where]).float()  # (completion tokens, vocab)
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, ids[:, 1:][where][:, None]).squeeze(-1) - lse
    logp = torch.zeros(mask.shape, dtype=picked.dtype, device=device).masked_scatter(where, picked)
    ent = None
    if entropy:
        with torch.no_grad():
            probs = torch.softmax(logits.detach(), dim=-1)
            token_ent = lse.detach() - (probs * logits.detach()).sum(-1)
            ent = torch.zeros(mask.shape, device=device).masked_scatter(where, token_ent)
    return logp, mask, ent
