"""Typed settings of the build, train and eval stages: every default lives here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from datagen.arithmetic import LEVELS
from datagen.config import GenerateConfig, PromptsConfig, Strict
from datagen.shards import StageDir
from judges.config import JudgesConfig, JudgeSettings


class BuildConfig(Strict):
    """Which training set to make from the judged rows, and how."""

    builder: str = Field(
        "scl",
        description="scl, star, self_contrast, sima, selfee, best_vs_worst, or 'package.module:Name' for your own",
    )
    judge: str | None = Field(
        None,
        description="the judge whose columns the builder reads (default: verifier for scl and star, embedding for "
        "self_contrast, self_critic for sima, reward_model for best_vs_worst; selfee reads none)",
    )
    min_score: float | None = Field(
        None,
        description="selfee: keep chains whose final answer the judge scores at least this, in the judge's own "
        "units (default: the pass mark its class declares: verifier 1 of 0/1, openai 8 of 1-10; others must set it)",
    )
    scl_prompt: Literal["question", "review", "both"] = Field(
        "question",
        description="scl: what a pair answers: the question (as the SCL seed), the review turn (question, "
        "attempt 1, review prompt), or both (two pairs per flip)",
    )
    star_correct_to_correct: bool = Field(
        False, description="star: also SFT on right->right samples (SCoRe's D+ STaR), not only wrong->right"
    )
    negatives: Literal[1, 2, 4, 8, 16] = Field(4, description="self_contrast: negatives k per prompt")
    drop_similar_fraction: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="self_contrast: share of responses most similar to the reference dropped",
    )
    score_attempt: Literal["attempt1", "attempt2", "last"] = Field(
        "last", description="best_vs_worst: which attempt of each sample is the response scored"
    )
    min_margin: float = Field(
        0.0, ge=0, description="best_vs_worst: drop prompts whose best-worst gap is not above this"
    )
    selfee_only_revised: bool = Field(
        False, description="selfee: keep only chains with at least one revision"
    )
    seed: int | None = Field(
        None, description="self_contrast: seed of the random negatives (default: the run's seed)"
    )
    shard_size: int = Field(4096, ge=1, description="pairs per output Parquet file")

    @model_validator(mode="after")
    def _selfee_threshold(self) -> BuildConfig:
        # a threshold against the judge's scale is checked where the judges are known (rl.builders)
        if self.builder == "selfee" and self.judge is None and self.min_score is not None:
            raise ValueError("min_score needs build.judge: the judge whose score it is compared with")
        return self


class LoraConfig(Strict):
    enabled: bool = Field(True, description="train a LoRA adapter (False: full fine-tuning)")
    r: int = Field(8, ge=1, description="rank of the low-rank update")
    alpha: int = Field(16, ge=1, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], description="module names that get adapters"
    )


class VisionTrainConfig(Strict):
    """What trains in a vision-language model besides the language model's LoRA (or full) weights (``rl.vision``)."""

    tower: Literal["frozen", "lora", "full"] = Field(
        "frozen", description="the vision encoder: frozen, LoRA on its target modules too, or all its weights"
    )
    projector: Literal["frozen", "full"] = Field(
        "frozen", description="the projector from vision features to the language model: frozen or all its weights"
    )
    projector_lr: float | None = Field(
        None, gt=0, description="learning rate of the projector when it trains (default: train.lr; SIMA: 2e-5)"
    )


class SftFirstConfig(Strict):
    """SFT on the chosen responses before DPO, and DPO from the result (Self-Contrast's starting point)."""

    epochs: float = Field(1.0, gt=0)
    lr: float | None = Field(None, gt=0, description="peak learning rate (default: train.lr)")
    grad_accum: int | None = Field(None, ge=1, description="micro-batches per step (default: train.grad_accum)")


class SeedShapingConfig(Strict):
    """The SCoRe seed's attempt-2 reward: improved, partially improved, or not improved (see rl.score_math)."""

    improved: float = 1.0
    partial: float = 0.5
    unchanged: float = -1.0


class DynamicSamplingConfig(Strict):
    """Prompts whose episodes all get the same shaped rewards carry no gradient under RLOO: drop them and
    sample more prompts, up to ``max_rounds`` more batches per step (DAPO's dynamic sampling, Yu et al. 2025)."""

    enabled: bool = True
    max_rounds: int = Field(3, ge=0, description="extra batches of prompts_per_step prompts a step may sample")


class ScoreConfig(Strict):
    """SCoRe (Kumar et al. 2024, arXiv 2409.12917): two-stage multi-turn RL on on-policy vLLM rollouts.

    Defaults are the paper's (Table 5, MATH): temperature 1.0, alpha 10, beta1 0.01, beta2 0.1, gamma 0 (each
    attempt its own reward), binary verifier rewards, the checkpoint with the best training reward kept.
    """

    stage1_steps: int = Field(50, ge=0, description="stage I: maximise r(y2), attempt 1 held near the base by beta2")
    stage2_steps: int = Field(200, ge=0, description="stage II: maximise r(y1) + r(y2) + the shaping bonus")
    prompts_per_step: int = Field(32, ge=1, description="prompts per update; each gives n episodes (the paper: "
                                  "512 episodes per batch)")  # fmt: skip
    n: int = Field(4, ge=1, description="episodes per prompt (attempt 1 -> correction -> attempt 2); RLOO needs >= 2")
    temperature: float = Field(
        1.0,
        gt=0,
        description="both attempts (the paper: 1.0); the trainer's log-probs are of softmax(logits / temperature), "
        "the distribution the engines sample",
    )
    max_tokens: int | None = Field(None, ge=1, description="new tokens per attempt (default: generate.max_tokens)")
    review_prompt: str = Field("score", description="the correction instruction: 'score', 'scl' or your text")
    judge: str = Field("verifier", description="the judge (a name under judges:) whose scores are the rewards")
    alpha: float = Field(10.0, ge=0, description="stage II bonus alpha * (r(y2) - r(y1)) on attempt 2's reward")
    beta1: float = Field(0.01, ge=0, description="KL weight on both attempts in stage II, and on attempt 2 in stage I")
    beta2: float = Field(0.1, ge=0, description="stage I: KL weight on attempt 1 (strong: it stays near the base)")
    shaping: str = Field(
        "bonus",
        description="bonus: the paper's alpha term; seed: the SCoRe seed's +1/0.5/-1; none: r(y2) alone; or "
        "'package.module:Name' (rl.score_math.SHAPING)",
    )
    seed_values: SeedShapingConfig = SeedShapingConfig()
    baseline: str = Field(
        "rloo", description="rloo: leave-one-out mean of the prompt's episodes; none (rl.score_math.BASELINES)"
    )
    kl_estimator: str = Field(
        "k3",
        description="per-token KL(pi || pi_ref) estimate (Schulman 2020): k1, k2, k3, low_var_kl (k3 clamped to "
        "[-10, 10]) or 'package.module:Name' (rl.score_math.KL_ESTIMATORS)",
    )
    kl_in: Literal["loss", "reward"] = Field(
        "reward",
        description="reward: beta * the attempt's sum of k1 subtracted from its reward, the exact gradient of "
        "KL(pi || pi_ref) (the estimator then only reports); loss: beta * the estimator added to the loss per token "
        "(k2: each token's KL, blind to later tokens; k3, low_var_kl: the reverse KL's gradient; see rl.score_math)",
    )
    kl_logprobs: Literal["auto", "trainer", "engine"] = Field(
        "auto",
        description="the policy's log-probs in the KL penalty of kl_in: reward, where the trainer's share of an "
        "attempt spans micro-batches: trainer (a forward of its own); engine (the rollout engines', sampled with "
        "the trainer's own weights: one forward less an attempt; a batch behind the trainer (overlap), whose "
        "engine failed the sync check or gave no log-probs takes the trainer's); auto: engine where the engines "
        "and the trainer both compute in float32 (they differ by about 1e-5 a token), trainer otherwise",
    )
    loss_agg: Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"] = Field(
        "seq_mean_token_sum",
        description="how token terms become the loss: seq_mean_token_sum sums each attempt's tokens and averages "
        "over episodes, so both attempts of an episode count as the paper sums them; token_mean divides each "
        "attempt by its own token count (a short attempt weighs more per token)",
    )
    importance: Literal["tis", "none"] = Field(
        "tis",
        description="tis: each token's term weighted by min(pi / pi_engine, tis_cap) from the engine's log-probs "
        "(on-policy in expectation with overlap's lag and the engine's own numerics); none: no weights",
    )
    tis_cap: float = Field(2.0, ge=1, description="the cap of the truncated importance weight (veRL's default)")
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    micro_batch: int = Field(
        4, ge=1,
        description="sequences per forward pass; where a worker's share of an attempt fits in one, kl_in: reward "
        "takes the KL penalty from the forward the loss backpropagates through (one policy forward, not two)",
    )
    max_policy_lag: int = Field(1, ge=0, description="updates a rollout's weights may be behind the trainer's")
    overlap: bool = Field(
        False, description="sample the next batch while training on this one (needs max_policy_lag >= 1)"
    )
    rollout_actors: int = Field(1, ge=1, description="vLLM engines sampling rollouts (generate.engine settings each)")
    weight_sync: Literal["auto", "blob", "adapter", "nccl"] = Field(
        "auto",
        description="blob: merged weights as safetensors bytes through the object store (CPU and GPU); adapter: "
        "only the LoRA adapter, served with vLLM LoRA requests; nccl: vLLM's weight transfer over NCCL (GPU); "
        "auto: nccl on GPU, blob on CPU",
    )
    sync_timeout_s: float = Field(600.0, gt=0, description="limit on one weight sync or engine restart")
    keep: Literal["best", "last"] = Field("best", description="best: the weights with the best training reward")
    select_window: int = Field(5, ge=1, description="steps over which the training reward is averaged for keep: best")

    @field_validator("shaping", "baseline", "kl_estimator")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        from rl import score_math  # torch: only when a SCoRe setting is validated

        registry = {"shaping": score_math.SHAPING, "baseline": score_math.BASELINES}.get(
            info.field_name or "", score_math.KL_ESTIMATORS
        )
        registry.get(name)  # ValueError naming the known ones
        return name

    @model_validator(mode="after")
    def _check(self) -> ScoreConfig:
        if self.stage1_steps + self.stage2_steps == 0:
            raise ValueError("stage1_steps + stage2_steps is 0: nothing to train")
        if self.overlap and self.max_policy_lag < 1:
            raise ValueError("overlap samples with weights one update old: it needs max_policy_lag >= 1")
        if self.baseline == "rloo" and self.n < 2:
            raise ValueError("baseline rloo needs n >= 2 episodes per prompt")
        if self.kl_in == "loss" and self.kl_estimator == "k1":
            raise ValueError(
                "kl_estimator k1 with kl_in: loss has an expected gradient of 0 (E[grad log pi] = 0): use kl_in: "
                "reward (exact with k1) or another estimator"
            )
        return self

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps


class TrainConfig(Strict):
    """DPO, SFT or SCoRe on Ray Train."""

    algorithm: str = Field(
        "dpo",
        description="dpo: preference pairs; sft: messages; score: SCoRe's on-policy RL (train.score); or "
        "'package.module:Name' for your own (rl.algorithms; the run's config checks the name)",
    )
    score: ScoreConfig = ScoreConfig()
    lora: LoraConfig = LoraConfig()
    vision: VisionTrainConfig = VisionTrainConfig()
    beta: float = Field(0.1, gt=0, description="DPO: strength of the pull toward the reference model")
    sft_beta: float = Field(
        0.0,
        ge=0,
        le=1,
        description="DPO: the mix (1 - sft_beta) * DPO + sft_beta * SFT on chosen, as ms-swift's sft_beta (SCL: 0.1)",
    )
    sft_first: SftFirstConfig | None = Field(
        None, description="DPO: first SFT on prompt + chosen (each distinct once), then DPO from that model"
    )
    lr: float = Field(5e-5, gt=0, description="peak learning rate")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of steps spent warming up")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="optimizer steps; -1: run the epochs")
    batch_size: int = Field(4, ge=1, description="pairs (or examples) per worker per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    group_pairs: bool = Field(
        True, description="keep the pairs of one prompt (one group) in the same optimizer step"
    )
    max_length: int = Field(
        2048, ge=16, description="tokens of prompt + completion; longer examples are refused or dropped (too_long)"
    )
    too_long: Literal["error", "drop"] = Field(
        "error",
        description="examples over max_length: error refuses to train (exit 2); drop leaves them out, counted",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 where the hardware computes it natively (GPUs, CPUs with AMX/AVX512-BF16), "
        "else fp32; resolved in each training worker",
    )
    gradient_checkpointing: bool = False
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one GPU each when use_gpu)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept in the run dir")
    max_failures: int = Field(
        3, ge=-1, description="worker-group restarts before the run fails (-1: no limit)"
    )
    log_every: int = Field(10, ge=1)
    log_samples: bool = Field(False, description="write the ids of the pairs each step trained on")
    merge: bool = Field(True, description="also save the LoRA adapter merged into the base model")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.algorithm == "sft" and self.sft_beta:
            raise ValueError("sft_beta only applies to algorithm: dpo")
        if self.algorithm == "sft" and self.sft_first is not None:
            raise ValueError("sft_first only applies to algorithm: dpo")
        return self

    @property
    def global_batch(self) -> int:
        """Pairs per optimizer step over all workers."""
        return self.batch_size * self.grad_accum * self.num_workers


@dataclass(frozen=True)
class TrainInputs:
    """What a training algorithm may read of a run: the narrow parts of the config, and the build's output."""

    train: TrainConfig
    model: str  # as the config names it
    model_path: str  # resolved to a local folder
    build: StageDir  # the build stage's output (offline algorithms)
    prompts: PromptsConfig  # the training prompts (on-policy algorithms)
    generate: GenerateConfig
    judges: dict[str, JudgeSettings]
    seed: int
    judge_cache: Path  # where an API judge without a cache_dir of its own caches its answers
    done: bool  # the train stage has finished already: its output is only compared by fingerprint


LABEL_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
BUILTIN_LABELS = ("base", "trained")


class EvalPromptsConfig(PromptsConfig):
    """The eval set: the built-in arithmetic ``test`` split by default, which shares no problem with ``train``;
    its level is the training prompts' (``prompts.level``) unless it names its own."""

    split: Literal["train", "test"] = "test"
    size: int = Field(200, ge=1, description="arithmetic: number of problems per split")

    @model_validator(mode="after")
    def _every_problem(self) -> EvalPromptsConfig:
        if self.pass_rate is not None:
            raise ValueError("pass_rate: the eval measures every held-out problem, not those a model found hard")
        return self


PASS_RATES_FILE = "pass_rates.jsonl"  # under RUN_DIR/calibrate/: one line per prompt measured


class CalibrateConfig(Strict):
    """``selfcorrect calibrate``: where a model stands on the task ladder, before any training.

    Per level, on the first ``size`` problems of the *train* split (the prompts a run would train on;
    the test split stays unseen until the eval): pass@1 greedy and, under the review prompt, Acc@t2,
    Δ, Δi→c, Δc→i; pass@k at the sampling temperature from ``n`` samples; and each prompt's pass rate
    (RUN_DIR/calibrate/pass_rates.jsonl), which ``prompts.pass_rate`` filters on.
    """

    levels: list[str] | None = Field(
        None, description="arithmetic levels to measure (default: every level; a prompt file is measured as is)"
    )
    size: int = Field(100, ge=1, description="problems per level: the first of the train split")
    n: int = Field(8, ge=1, description="samples per problem at the sampling temperature (pass@k, pass rates)")
    pass_k: list[int] = Field([1, 8], description="the k of pass@k (each k <= n is reported)")
    temperature: float | None = Field(None, ge=0, description="of the samples (default: generate.temperature)")
    max_tokens: int | None = Field(None, ge=1, description="new tokens per attempt (default: generate.max_tokens)")
    review_prompt: str | None = Field(None, description="'scl', 'score' or your text (default: generate.review_prompt)")

    @field_validator("levels")
    @classmethod
    def _known(cls, levels: list[str] | None) -> list[str] | None:
        if levels is not None:
            unknown = [x for x in levels if x not in LEVELS]
            if unknown or not levels:
                raise ValueError(f"unknown level(s) {unknown}; known: {', '.join(LEVELS)}")
        return levels


class EvalConfig(Strict):
    """Before/after self-correction metrics: each model answers, is asked to review, answers again."""

    models: dict[str, str | None] | None = Field(
        None,
        description="label -> HF name or folder, evaluated in this order; null for the built-in labels "
        "'base' (the config's model) and 'trained' (RUN_DIR/train/model). Unset: base, and trained once the "
        "train stage has finished",
    )
    prompts: EvalPromptsConfig = EvalPromptsConfig()
    n: int = Field(1, ge=1, description="samples per problem")
    temperature: float = Field(0.0, ge=0, description="both attempts; 0 is greedy, as SCoRe evaluates")
    max_tokens: int | None = Field(None, ge=1, description="new tokens per attempt (default: generate.max_tokens)")
    review_prompt: str | None = Field(None, description="'scl', 'score' or your text (default: generate.review_prompt)")
    judges: JudgesConfig | None = Field(None, description="judges run on the eval rows (default: the config's judges)")
    judge: str | None = Field(
        None, description="whose scores decide right/wrong (default: verifier if it runs, else the first judge)"
    )
    threshold: float = Field(0.5, description="a score at or above this counts as right (verifier: 1 or 0)")
    pass_k: list[int] = Field([1, 5, 10], description="code prompts: the k of pass@k (each k <= n is reported)")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for the interval of delta")
    pairwise: bool = Field(
        True, description="pairwise judges (openai pairwise, self_critic) compare each model's attempt 2 with base's"
    )
    selfee_revisions: int | None = Field(
        None,
        ge=1,
        description="SelFee: also answer in revision-enforce mode with K revisions and report the accuracy "
        "after 0..K of them (one more generation per model)",
    )
    selfee_generate: dict[str, Any] = Field(
        default_factory=dict, description="further generate settings of that run (e.g. selfee_format: chain)"
    )

    @field_validator("models")
    @classmethod
    def _labels(cls, models: dict[str, str | None] | None) -> dict[str, str | None] | None:
        if models is None:
            return None
        if not models:
            raise ValueError("name at least one model (or leave eval.models unset for base and trained)")
        for label in models:
            if not re.match(LABEL_RE, label):
                raise ValueError(f"label {label!r}: letters, digits, '_', '.', '-' only (it names a folder)")
        return models
