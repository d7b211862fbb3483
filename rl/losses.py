"""The maths of preference training, as plain functions over tensors.

TRL's ``DPOTrainer`` computes these same quantities inside its loop; these functions state them
once, with the formula, so tests can check the numbers by hand and so the trainer's figures can be
checked against them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def token_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Per-token log-probabilities of ``labels`` under next-token ``logits``.

    ``logits`` is ``[B, T, V]`` for positions ``0..T-1`` and ``labels`` is ``[B, T]`` aligned with the
    inputs, so position ``t``'s logits predict ``labels[:, t+1]``:

        logp[b, t] = log softmax(logits[b, t])[labels[b, t+1]]      for t = 0..T-2

    Positions whose label is ``ignore_index`` (the prompt, padding) get 0. Returns ``[B, T-1]``.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != ignore_index
    safe = shifted_labels.masked_fill(~mask, 0)
    logps = torch.gather(F.log_softmax(shifted_logits, dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return logps * mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Log-probability of each completion: the sum of its token log-probabilities.

        log pi(y | x) = sum_t log pi(y_t | x, y_<t)

    (the sequence-level quantity of DPO, Rafailov et al. 2023, eq. 7). Returns ``[B]``.
    """
    return token_logps(logits, labels, ignore_index).sum(dim=-1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7).

        r_w = beta * (log pi(y_w|x) - log pi_ref(y_w|x))
        r_l = beta * (log pi(y_l|x) - log pi_ref(y_l|x))
        L   = -log sigmoid(r_w - r_l)

    When the policy equals the reference both rewards are 0 and ``L = ln 2``. Returns the
    per-pair losses and the implicit rewards ``r_w`` and ``r_l``.
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def sft_loss(chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the chosen completions, averaged over all their tokens in the batch.

        L_sft = -(1 / N) * sum_{b,t: mask} log pi(y_w[b,t] | x, y_w[b,<t])

    This is TRL's ``loss_type="sft"`` term (one number for the micro-batch).
    """
    mask = chosen_mask.bool()
    return -chosen_token_logps[mask].mean()


def sequence_nll(chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence negative log-likelihood, averaged over each sequence's own tokens:

        L_sft[b] = -(1 / |y_w[b]|) * sum_t log pi(y_w[b,t] | x, y_w[b,<t])

    (ms-swift's ``get_batch_logps(..., average_log_prob=True)``). Returns ``[B]``. Its batch mean
    equals ``sft_loss`` when every sequence has the same length, e.g. at one pair per micro-batch.
    """
    mask = chosen_mask.to(chosen_token_logps.dtype)
    return -(chosen_token_logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def dpo_sft_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    beta: float = 0.1,
    sft_beta: float = 0.0,
) -> torch.Tensor:
    """DPO mixed with SFT on the chosen responses, as ms-swift's ``sft_beta`` mixes them:

        L = mean_b [ (1 - sft_beta) * L_dpo[b] + sft_beta * L_sft[b] ]

    with ``L_sft[b]`` from ``sequence_nll`` (ms-swift ``DPOTrainer.get_batch_loss_metrics``: ``losses =
    (1 - self.sft_beta) * losses + self.sft_beta * sft_loss``). SCL (He et al., 2024) trains with
    ``sft_beta = 0.1``. The training loop gets the same mix from TRL as ``loss_type=["sigmoid", "sft"]``
    with ``loss_weights=[1 - sft_beta, sft_beta]``; TRL averages the SFT term over the micro-batch's
    tokens rather than per sequence, which is the same number at one pair per micro-batch (SCL's
    batch size) or equal lengths.
    """
    losses, _, _ = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    if sft_beta:
        losses = (1 - sft_beta) * losses + sft_beta * sequence_nll(chosen_token_logps, chosen_mask)
    return losses.mean()
