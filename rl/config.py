"""Typed settings of the build, train and eval stages: every default lives here."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from datagen.config import PromptsConfig, Strict
from judges.config import JudgesConfig

# SelFee's judge filter: the pass mark of each known judge's final-answer score, in its own units, and
# its scale. The verifier says 0 or 1 (keep the correct); the API judge scores 1-10 (keep 8 and up:
# one below SelFee's revise-below-9 bar, which is the critic's own; a separate grader marks lower).
# Other judges' scales are unknown here: build.min_score must be given for them.
SELFEE_PASS_MARKS: dict[str, float] = {"verifier": 1.0, "openai": 8.0}
JUDGE_SCALES: dict[str, tuple[float, float]] = {"verifier": (0.0, 1.0), "openai": (1.0, 10.0)}


class BuildConfig(Strict):
    """Which training set to make from the judged rows, and how."""

    builder: str = Field(
        "scl",
        description="scl, self_contrast, sima, selfee, best_vs_worst, or 'package.module:Name' for your own",
    )
    judge: str | None = Field(
        None,
        description="the judge whose columns the builder reads (default: verifier for scl, embedding for "
        "self_contrast, self_critic for sima, reward_model for best_vs_worst; selfee reads none)",
    )
    min_score: float | None = Field(
        None,
        description="selfee: keep chains whose final answer the judge scores at least this, in the judge's own "
        "units (default: its pass mark: verifier 1 of 0/1, openai 8 of 1-10; other judges must set it)",
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
        if self.builder != "selfee":
            return self
        if self.judge is None:
            if self.min_score is not None:
                raise ValueError("min_score needs build.judge: the judge whose score it is compared with")
            return self
        threshold = self.min_score if self.min_score is not None else SELFEE_PASS_MARKS.get(self.judge)
        if threshold is None:
            known = ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in JUDGE_SCALES.items())
            raise ValueError(f"judge {self.judge!r} has no known score scale: set build.min_score in its units "
                             f"(known: {known})")  # fmt: skip
        low, high = JUDGE_SCALES.get(self.judge, (float("-inf"), float("inf")))
        if not low < threshold <= high:
            # at or below the scale's bottom keeps every chain; above its top keeps none
            raise ValueError(
                f"min_score {threshold:g} is outside the {self.judge} judge's scale ({low:g}-{high:g}): "
                "it would keep every chain or none"
            )
        return self


class LoraConfig(Strict):
    enabled: bool = Field(True, description="train a LoRA adapter (False: full fine-tuning)")
    r: int = Field(8, ge=1, description="rank of the low-rank update")
    alpha: int = Field(16, ge=1, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], description="module names that get adapters"
    )


class SftFirstConfig(Strict):
    """SFT on the chosen responses before DPO, and DPO from the result (Self-Contrast's starting point)."""

    epochs: float = Field(1.0, gt=0)
    lr: float | None = Field(None, gt=0, description="peak learning rate (default: train.lr)")
    grad_accum: int | None = Field(None, ge=1, description="micro-batches per step (default: train.grad_accum)")


class TrainConfig(Strict):
    """DPO or SFT on Ray Train."""

    algorithm: Literal["dpo", "sft"] = Field("dpo", description="dpo: preference pairs; sft: messages")
    lora: LoraConfig = LoraConfig()
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
        "auto", description="auto: bf16 on GPU, fp32 on CPU"
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


LABEL_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
BUILTIN_LABELS = ("base", "trained")


class EvalPromptsConfig(PromptsConfig):
    """The eval set: the built-in arithmetic ``test`` split by default, which shares no problem with ``train``."""

    split: Literal["train", "test"] = "test"
    size: int = Field(200, ge=1, description="arithmetic: number of problems per split")


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
