"""SCoRe's update against the paper's objective, on a language model small enough to enumerate.

The model (``Markov``) has 3 tokens and a next-token table: every completion of 2 tokens can be listed,
so an expectation over the policy is an exact sum. With the policy's table at 0 the policy is uniform:
the 9 completions, one episode each, are then exactly the expectation over sampled episodes, and the
trainer's gradient on them is its expected gradient. It is read off one SGD step at learning rate 1
(no clipping): the weights move by exactly -gradient.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from rl.config import TrainConfig
from rl.episodes import Attempt, Episode, EpisodeBatch
from rl.score_step import Policy, prompts_with_signal, train_step

V = 3
PROMPT = [0]
COMPLETIONS = [list(c) for c in itertools.product(range(V), repeat=2)]


class Markov(torch.nn.Module):
    """A causal LM whose next token depends on the current one: p(b | a) = softmax(table[a])[b], with the
    interface the trainer's log-probs use (a decoder's hidden states, an output head)."""

    def __init__(self, table: torch.Tensor, trainable: bool = True):
        super().__init__()
        self.embed = torch.nn.Embedding(V, V)
        self.embed.weight.data = torch.eye(V)
        self.embed.weight.requires_grad_(False)
        self.head = torch.nn.Linear(V, V, bias=False)
        self.head.weight.data = table.T.clone()  # head(one_hot(a)) = table[a]
        self.head.weight.requires_grad_(trainable)

    def get_decoder(self):
        return lambda input_ids, attention_mask: SimpleNamespace(last_hidden_state=self.embed(input_ids))

    def get_output_embeddings(self):
        return self.head

    def logp(self, seq: list[int]) -> torch.Tensor:
        """log p(seq | PROMPT), differentiable."""
        logits = self.head.weight.T  # table
        prev, total = PROMPT[-1], torch.zeros(())
        for tok in seq:
            total = total + torch.log_softmax(logits[prev], -1)[tok]
            prev = tok
        return total


REF_TABLE = torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.9, -1.2], [-0.7, 0.1, 0.8]])


def _episodes(first: list[list[int]], second: list[list[int]], r1: list[float], r2: list[float]) -> list[Episode]:
    """One episode per completion, each its own prompt (its advantage is its reward: no baseline)."""
    out = []
    for i, (a, b, x, y) in enumerate(zip(first, second, r1, r2, strict=True)):
        out.append(Episode(f"p{i}", 0, 0, Attempt(PROMPT, a, [], "", "stop", reward=x),
                           Attempt(PROMPT, b, [], "", "stop", reward=y)))  # fmt: skip
    return out


def _gradient(policy: Markov, episodes: list[Episode], stage: int, temperature: float = 1.0, **score) -> torch.Tensor:
    t = TrainConfig(algorithm="score", max_grad_norm=1e9, score={"stage1_steps": 1, "baseline": "none", **score})
    before = policy.head.weight.detach().clone()
    opt = torch.optim.SGD([policy.head.weight], lr=1.0)
    ref = Markov(REF_TABLE, trainable=False)
    train_step(Policy(policy, ref, 0, torch.device("cpu"), temperature), opt, episodes, stage, t)
    return before - policy.head.weight.detach()


def _exact_kl_gradient(beta: float) -> torch.Tensor:
    """beta * grad KL(pi || pi_ref) over whole completions, by enumeration."""
    policy, ref = Markov(torch.zeros(V, V)), Markov(REF_TABLE, trainable=False)
    kl = sum(policy.logp(c).exp() * (policy.logp(c) - ref.logp(c).detach()) for c in COMPLETIONS)
    (beta * kl).backward()
    return policy.head.weight.grad


def test_the_default_kl_term_has_the_gradient_of_the_papers_kl():
    """Stage I on attempt 1 with no reward: the update is beta2 * grad KL(pi || pi_ref) of the attempt."""
    zeros = [0.0] * len(COMPLETIONS)
    episodes = _episodes(COMPLETIONS, [[]] * len(COMPLETIONS), zeros, zeros)
    want = _exact_kl_gradient(0.1)
    got = _gradient(Markov(torch.zeros(V, V)), episodes, 1, beta2=0.1, beta1=0.0)
    assert torch.allclose(got, want, atol=1e-6), (got, want)
    # the estimators in the loss do not: k2 is blind to later tokens, k3 follows the reverse KL
    for estimator in ("k2", "k3"):
        loss_kl = _gradient(Markov(torch.zeros(V, V)), _episodes(COMPLETIONS, [[]] * 9, zeros, zeros), 1,
                            beta2=0.1, beta1=0.0, kl_in="loss", kl_estimator=estimator)  # fmt: skip
        assert not torch.allclose(loss_kl, want, atol=1e-3), estimator


def test_k1_in_the_loss_is_refused():
    with pytest.raises(ValueError, match="expected gradient of 0"):
        TrainConfig(algorithm="score", score={"kl_in": "loss", "kl_estimator": "k1"})


def test_the_default_loss_sums_both_attempts_of_an_episode():
    """Attempt 1 of 2 tokens, attempt 2 of 1: the update is -(1/N) sum_i [A1_i grad log pi(y1_i) + A2_i grad
    log pi(y2_i)], each token weighing the same whichever attempt it is in."""
    second = [[c[0]] for c in COMPLETIONS]
    r1 = [float(i % 2) for i in range(9)]
    r2 = [float(i % 3 == 0) for i in range(9)]
    model = Markov(torch.zeros(V, V))
    pairs = zip(COMPLETIONS, second, r1, r2, strict=True)
    objective = sum(a * model.logp(y1) + b * model.logp(y2) for y1, y2, a, b in pairs)
    (-objective / len(COMPLETIONS)).backward()
    got = _gradient(Markov(torch.zeros(V, V)), _episodes(COMPLETIONS, second, r1, r2), 2, shaping="none",
                    beta1=0.0)  # fmt: skip
    assert torch.allclose(got, model.head.weight.grad, atol=1e-6)


def test_tokens_sampled_by_other_weights_are_importance_weighted():
    """The engine gave its tokens other log-probs (an update behind, say): each token's term is weighted by
    min(pi / pi_engine, cap), so the update is the on-policy one in expectation."""
    r1 = [1.0 - 0.25 * i for i in range(9)]
    engine_shift = torch.tensor([0.5, -0.4, 1.2])  # engine log-prob = trainer's - shift, per first token
    model = Markov(torch.zeros(V, V))
    objective = torch.zeros(())
    episodes = _episodes(COMPLETIONS, [[]] * 9, r1, [0.0] * 9)
    for e, a in zip(episodes, r1, strict=True):
        y = e.first.tokens
        lp1 = torch.log_softmax(model.head.weight.T[PROMPT[-1]], -1)[y[0]]
        lp2 = torch.log_softmax(model.head.weight.T[y[0]], -1)[y[1]]
        w1 = min(float(torch.exp(engine_shift[y[0]])), 2.0)  # pi / pi_engine = exp(shift), capped at 2
        e.first.logp = [float(lp1.detach()) - float(engine_shift[y[0]]), float(lp2.detach())]
        objective = objective + a * (w1 * lp1 + lp2)
    (-objective / 9).backward()
    got = _gradient(Markov(torch.zeros(V, V)), episodes, 2, shaping="none", beta1=0.0)
    assert torch.allclose(got, model.head.weight.grad, atol=1e-6)
    plain = _gradient(Markov(torch.zeros(V, V)), episodes, 2, shaping="none", beta1=0.0, importance="none")
    assert not torch.allclose(plain, model.head.weight.grad, atol=1e-3)


def test_log_probs_are_those_of_the_sampling_temperature():
    """At temperature 0.5 the engine samples softmax(logits / 0.5): the trainer's log-probs are of that."""
    table = torch.tensor([[0.2, 1.0, -0.3], [0.0, 0.5, 0.1], [1.0, -1.0, 0.0]])
    policy = Policy(Markov(table), None, 0, torch.device("cpu"), temperature=0.5)
    logp, mask, _ = policy.logprobs([(PROMPT, [1, 2])])
    want = [torch.log_softmax(table[0] / 0.5, -1)[1], torch.log_softmax(table[1] / 0.5, -1)[2]]
    assert logp[0][mask[0] > 0].tolist() == pytest.approx([float(w) for w in want])


def test_a_batch_of_two_weight_versions_counts_its_lag_from_the_older():
    """An engine restarted mid-batch samples its part with newer weights: the batch is as old as its oldest."""
    old, new = _episodes([[1, 1]] * 2, [[1]] * 2, [0.0] * 2, [0.0] * 2)
    new.version = 4
    old.version = 3
    assert EpisodeBatch([new, old]).version == 3


def test_prompts_whose_episodes_agree_carry_no_signal():
    def ep(pid, r1, r2):
        return Episode(pid, 0, 0, Attempt([0], [1], [], "", "stop", reward=r1), Attempt([0], [1], [], "", "stop",
                       reward=r2))  # fmt: skip

    s = TrainConfig(algorithm="score").score
    episodes = [ep("same", 1, 1), ep("same", 1, 1), ep("flip", 0, 1), ep("flip", 0, 0), ep("t1", 1, 1), ep("t1", 0, 1)]
    assert prompts_with_signal(episodes, 2, s) == ["flip", "t1"]
    # stage I rewards attempt 2 alone: prompt t1's attempts 2 agree
    assert prompts_with_signal(episodes, 1, s) == ["flip"]
    episodes[3].flagged = "bad_score"  # one valid episode left: no baseline, its reward is its advantage
    assert prompts_with_signal(episodes, 1, s) == ["flip"]


def test_the_learning_rate_follows_train_scheduler():
    """train.scheduler and train.warmup_ratio shape SCoRe's learning rate as they do DPO's."""
    from rl.score_recipe import make_scheduler

    t = TrainConfig(algorithm="score", lr=1.0, scheduler="linear", warmup_ratio=0.25,
                    score={"stage1_steps": 2, "stage2_steps": 6})  # fmt: skip
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    sched = make_scheduler(opt, t)
    rates = []
    for _ in range(8):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_code_prompts_get_the_code_correction_instruction():
    from datagen.config import REVIEW_PROMPTS, GenerateConfig
    from datagen.records import Prompt
    from datagen.turns import Completion, two_attempts

    prompts = [Prompt("m", [{"role": "user", "content": "2+2?"}], task="math"),
               Prompt("c", [{"role": "user", "content": "def f():"}], task="code")]  # fmt: skip
    def complete(requests):
        return [[Completion("x", 1, "stop")] * r.n for r in requests]

    turns = two_attempts(prompts, GenerateConfig(n=1, review_prompt="score"), complete, model="m", seed=0)
    assert [t.row["review_prompt"] for t in turns] == [REVIEW_PROMPTS["score"], REVIEW_PROMPTS["score_code"]]


@pytest.mark.parametrize(
    ("generate", "message"),
    [({"top_p": 0.9}, "generate.top_p 0.9: SCoRe trains on untruncated sampling"),
     ({"top_k": 20}, "generate.top_k 20: SCoRe trains on untruncated sampling")],
)  # fmt: skip
def test_a_truncated_sampler_is_refused(tiny_model_dir, generate, message):
    from datagen.config import GenerateConfig
    from datagen.shards import StageInputError
    from judges.config import default_judges
    from rl.score import check_score

    with pytest.raises(StageInputError, match=message):
        check_score(TrainConfig(algorithm="score"), default_judges(), str(tiny_model_dir), GenerateConfig(**generate))


def test_temperature_zero_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(algorithm="score", score={"temperature": 0})
