"""One SCoRe update's numbers, pinned: the loss, the KL and entropy per attempt, the gradient norm and the
weights after the step, on a tiny model with fixed seeds (no Ray, no engine).

The numbers were taken from the trainer before its loop was restructured; any change to how a step is
computed (other than an intended one, which then updates them with its reason) fails here.
"""

from __future__ import annotations

from statistics import fmean

import pytest
import torch

from rl.config import TrainConfig
from rl.episodes import Attempt, Episode
from rl.score_recipe import MISMATCH_LIMITS, use_engine_logprobs
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


def _sampled_by(model, episodes: list[Episode], shift: float = 0.0) -> list[Episode]:
    """The episodes as an engine holding ``model``'s weights would return them: each token's log-prob
    (plus ``shift``)."""
    policy = Policy(model, None, 0, torch.device("cpu"))
    for j in (1, 2):
        attempts = [e.attempt(j) for e in episodes]
        with torch.no_grad():
            logp, mask, _ = policy.logprobs([a.sequence for a in attempts])
        for a, row, m in zip(attempts, logp, mask, strict=True):
            a.logp = [v + shift for v in row[m > 0].tolist()]
    return episodes


class _Counting(Policy):
    forwards = 0  # the policy's
    references = 0  # pi_ref's

    def logprobs(self, seqs, entropy=False):
        type(self).forwards += 1
        return super().logprobs(seqs, entropy)

    def ref_forward(self, seqs):
        type(self).references += 1
        return super().ref_forward(seqs)


def _counted_step(model, episodes, score: dict, engine_logp: bool) -> tuple[dict[str, float], int]:
    t = TrainConfig(algorithm="score", lr=0.01, score={"stage1_steps": 1, **score})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=0.0)
    _Counting.forwards = _Counting.references = 0
    stats = train_step(_Counting(model, None, 0, torch.device("cpu")), opt, episodes, 1, t, engine_logp=engine_logp)
    return stats.as_dict(), _Counting.forwards


def test_the_kl_penalty_from_the_engines_logprobs_gives_the_pinned_step_with_one_policy_forward_less(tiny_model_dir):
    score, stage, want = PINNED["stage1_k1_reward"]  # micro-batches of 2: an attempt's six episodes take three
    model = _policy(tiny_model_dir)
    episodes = _sampled_by(model, _episodes(model.config.vocab_size))
    got, forwards = _counted_step(model, episodes, score, engine_logp=True)
    for key, value in want.items():
        if key in got:
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    assert forwards == 2 * 3  # the loss's own: 3 micro-batches x 2 attempts; the penalty's pass took none
    assert got["kl_from_engine"] == 1.0
    model = _policy(tiny_model_dir)
    got, forwards = _counted_step(model, _sampled_by(model, _episodes(model.config.vocab_size)), score, False)
    assert forwards == 2 * 2 * 3 and got["kl_from_engine"] == 0.0


def test_the_penalty_is_the_engines_logprobs_and_a_micro_batch_without_them_takes_the_trainers(tiny_model_dir):
    score, _, want = PINNED["stage1_k1_reward"]
    model = _policy(tiny_model_dir)
    episodes = _sampled_by(model, _episodes(model.config.vocab_size), shift=0.1)
    # each attempt-1 penalty grows by 0.1 a token; the mean over the six episodes by 0.1 x their mean length
    tokens = fmean(len(e.first.tokens) for e in episodes)
    got, forwards = _counted_step(model, episodes, score, engine_logp=True)
    assert got["kl_penalty_t1"] == pytest.approx(want["kl_penalty_t1"] + 0.1 * tokens, rel=1e-4)
    # episode 5's attempt 2 lacks its last token's log-prob (as from an engine that gave none): the micro-batch
    # it is in takes the trainer's forward, the other five keep the engine's
    model = _policy(tiny_model_dir)
    episodes = _sampled_by(model, _episodes(model.config.vocab_size))
    episodes[5].second.logp = episodes[5].second.logp[:-1]
    got, forwards = _counted_step(model, episodes, score, engine_logp=True)
    assert got["kl_penalty_t2"] == pytest.approx(want["kl_penalty_t2"], rel=1e-4)
    assert forwards == 2 * 3 + 1
    assert _Counting.references == 2 * 3  # pi_ref's forward of that micro-batch is not taken again
    assert got["kl_from_engine"] == pytest.approx((6 + 4) / 12)  # a micro-batch is two attempts


NAN = float("nan")


@pytest.mark.parametrize(
    ("setting", "lag", "mismatch", "dtypes", "engine"),
    [
        ("auto", 0, 1.1e-5, {"float32"}, True),
        ("auto", 0, 0.04, {"bfloat16"}, False),  # as much as 2 nats over an attempt: the trainer's forward
        ("auto", 0, 1e-5, {"float32", "bfloat16"}, False),  # one side in bfloat16
        ("engine", 0, 0.04, {"bfloat16"}, True),  # asked for: taken wherever the sync check passed
        ("trainer", 0, 1e-5, {"float32"}, False),
        ("auto", 1, 1e-5, {"float32"}, False),  # sampled an update behind (overlap): not the trainer's weights
        ("engine", 1, 1e-5, {"float32"}, False),
        ("auto", 0, NAN, {"float32"}, False),  # not measured (no log-probs came back)
        ("auto", 0, 0.5, {"float32"}, False),  # the sync check failed
        ("engine", 0, 0.5, {"bfloat16"}, False),
    ],
)
def test_which_batches_take_the_engines_logprobs_for_the_penalty(setting, lag, mismatch, dtypes, engine):
    limit = max(MISMATCH_LIMITS[d] for d in dtypes)  # as the loop bounds the check: the coarser dtype
    assert use_engine_logprobs(setting, lag, mismatch, limit, dtypes) is engine
