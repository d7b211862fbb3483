"""One SCoRe update's numbers, pinned: the loss, the KL and entropy per attempt, the gradient norm and the
weights after the step, on a tiny model with fixed seeds (no Ray, no engine).

The numbers were taken from the trainer before its loop was restructured; any change to how a step is
computed (other than an intended one, which then updates them with its reason) fails here.
"""

from __future__ import annotations

import pytest
import torch

from rl.config import TrainConfig
from rl.episodes import Attempt, Episode
from rl.score_step import Policy, train_step

# settings, stage -> what the step reported, and the trainable weights' sum and sum of squares after it
PINNED = {
    "stage2_k3_loss": (
        {"kl_estimator": "k3", "kl_in": "loss", "loss_agg": "token_mean"},
        2,
        {
            "pg_loss": 6.849404573440552, "kl_t1": 0.027899959435065586, "kl_t2": 0.02442079120212131,
            "entropy_t1": 10.776983261108398, "entropy_t2": 10.776920742458767, "grad_norm": 10.733739852905273,
            "shaped_t1": 0.5, "shaped_t2": 0.5, "param_sum": 23.403383965138346, "param_sq": 414.1764887683347,
        },
    ),
    "stage1_k1_reward": (
        {"kl_estimator": "k1", "kl_in": "reward", "loss_agg": "token_mean", "micro_batch": 2},
        1,
        {
            "kl_penalty_t1": 0.37704817454020184, "kl_penalty_t2": -0.13085349400838217,
            "pg_loss": 0.6448094125371426, "kl_t1": 0.04713102181752523, "kl_t2": -0.029078554224084924,
            "entropy_t1": 10.776983896891275, "entropy_t2": 10.776920742458767, "grad_norm": 0.9465498328208923,
            "shaped_t1": -0.037704817454020184, "shaped_t2": 0.5013085349400839, "param_sum": 24.444743836764246,
            "param_sq": 413.8165126178841,
        },
    ),
    "stage2_seed_seqsum": (
        {"shaping": "seed", "loss_agg": "seq_mean_token_sum", "kl_estimator": "low_var_kl", "kl_in": "loss"},
        2,
        {
            "pg_loss": 5.722423553466797, "kl_t1": 0.027899959435065586, "kl_t2": 0.02442079120212131,
            "entropy_t1": 10.776983261108398, "entropy_t2": 10.776920742458767, "grad_norm": 9.13724136352539,
            "shaped_t1": 0.5, "shaped_t2": -0.16666666666666666, "param_sum": 24.16487138159573,
            "param_sq": 414.3992941481423,
        },
    ),
}  # fmt: skip
# All six episodes in one micro-batch: the penalty comes from the forward the loss backpropagates through,
# not from a pass of its own; the step is the same.
_settings, _stage, _want = PINNED["stage1_k1_reward"]
PINNED["stage1_k1_reward_one_pass"] = ({**_settings, "micro_batch": 8}, _stage, _want)


def _policy(path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a policy that has moved away from the reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=g)
    return model


def _episodes(vocab: int) -> list[Episode]:
    """Six episodes of two prompts, attempts of different lengths (one attempt 2 of a single token)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(6):
        ids = lambda n: torch.randint(5, vocab, (n,), generator=g).tolist()  # noqa: E731
        x1, y1, x2, y2 = ids(6 + i), ids(3 + 2 * i), ids(14 + i), ids(7 - i)
        first = Attempt(x1, y1, [], "", "stop", reward=float(i % 2))
        second = Attempt(x2, y2, [], "", "stop", reward=float(i in (0, 1, 4)))
        out.append(Episode(f"p{i // 3}", i % 3, 0, first, second))
    return out


def _run(model, episodes: list[Episode], stage: int, score: dict) -> dict[str, float]:
    t = TrainConfig(algorithm="score", lr=0.01, score={"stage1_steps": 1, **score})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=0.0)
    return train_step(Policy(model, None, 0, torch.device("cpu")), opt, episodes, stage, t).as_dict()


@pytest.mark.parametrize("case", sorted(PINNED))
def test_a_score_step_gives_the_pinned_numbers(tiny_model_dir, case):
    score, stage, want = PINNED[case]
    model = _policy(tiny_model_dir)
    got = _run(model, _episodes(model.config.vocab_size), stage, score)
    trainable = [p.detach().double() for p in model.parameters() if p.requires_grad]
    got["param_sum"] = float(sum(p.sum() for p in trainable))
    got["param_sq"] = float(sum((p * p).sum() for p in trainable))
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
