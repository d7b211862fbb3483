"""Typed settings of the prompt sources and the generate stage: every default lives here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datagen.arithmetic import DEFAULT_LEVEL, LEVELS
from datagen.modes import MODES

MAX_OPERAND = 99  # prompts.max_operand's default

# The two self-correction instructions of the papers this project reproduces.
REVIEW_PROMPTS = {
    # SCL (He et al., 2024): the seed's review message 0 with the step-by-step request and the answer
    # format it appends (github.com/ivy3h/SCL, data_construction.py get_review_msg + extractor).
    "scl": (
        "Review your previous answer and find problems with your answer. Based on the problems "
        "you found, improve your answer. Explain your reasoning step-by-step. Your final answer "
        "should be put between two ##, like ## A ## (if your final answer is A), at the end of your "
        "response."
    ),
    # SCoRe (Kumar et al., 2024): the second-attempt instruction for MATH.
    "score": (
        "There might be an error in the solution above because of lack of understanding of the "
        "question. Please correct the error, if any, and rewrite the solution."
    ),
    # SCoRe's for code (MBPP, HumanEval).
    "score_code": (
        "There might be an error in the code above because of lack of understanding of the question. "
        "Please correct the error, if any, and rewrite the solution. Only output the final correct Python program!"
    ),
}
# An instruction's own version for code prompts, where its paper has one.
CODE_REVIEW_PROMPTS = {"score": "score_code"}


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PassRateConfig(Strict):
    """Keep the prompts whose measured pass rate p has ``above < p < below`` (``selfcorrect calibrate``
    writes p per prompt). A prompt whose samples all get the same verdict carries no signal: its
    RLOO advantages are 0 and it gives no preference pair (DAPO's dynamic sampling, Yu et al. 2025)."""

    file: str | None = Field(
        None, description="JSONL with prompt_id and pass_rate per line (default: RUN_DIR/calibrate/pass_rates.jsonl)"
    )
    above: float | None = Field(0.0, ge=0, lt=1, description="keep p > above (null: no lower bound)")
    below: float | None = Field(1.0, gt=0, le=1, description="keep p < below (null: no upper bound)")

    @model_validator(mode="after")
    def _bounds(self) -> PassRateConfig:
        if self.above is not None and self.below is not None and self.above >= self.below:
            raise ValueError("above must be < below: no pass rate lies between them")
        return self

    def keeps(self, rate: float) -> bool:
        return (self.above is None or rate > self.above) and (self.below is None or rate < self.below)


class PromptsConfig(Strict):
    path: str | None = Field(None, description="JSONL or Parquet file, a folder of them, or a saved HF dataset")
    builtin: Literal["arithmetic", "humaneval", "pictures"] | None = Field(
        "arithmetic", description="a built-in task set, used when no path is given"
    )
    level: str = Field(
        DEFAULT_LEVEL, description=f"arithmetic: the difficulty level ({', '.join(LEVELS)}; datagen/arithmetic.py)"
    )
    split: Literal["train", "test"] = "train"
    limit: int | None = Field(None, ge=1, description="use only the first N prompts (with pass_rate: N kept ones)")
    size: int = Field(
        1000, ge=1, description="arithmetic: problems per split (unset: at most this many; a small level has fewer)"
    )
    max_operand: int = Field(
        MAX_OPERAND, ge=5, description="arithmetic word levels: largest number in a problem (smaller is easier)"
    )
    pass_rate: PassRateConfig | None = Field(
        None, description="keep only prompts with a measured pass rate in bounds (prompts with signal)"
    )
    id_field: str = "prompt_id"
    prompt_field: str = "prompt"
    reference_field: str = "reference"
    task_field: str = "task"
    images_field: str | None = Field(
        None, description="field holding a row's image or images (default: 'images', else 'image')"
    )
    task: Literal["math", "code", "open"] = Field("open", description="task type for rows that name none")

    @field_validator("level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; known: {', '.join(LEVELS)}")
        return level

    @model_validator(mode="after")
    def _one_source(self) -> PromptsConfig:
        if self.path is not None:
            if "builtin" in self.model_fields_set and self.builtin is not None:
                raise ValueError("set only one of prompts.path and prompts.builtin")
            object.__setattr__(self, "builtin", None)
        elif self.builtin is None:
            raise ValueError("set prompts.path or prompts.builtin")
        # level, size and max_operand are the arithmetic's settings and other sources leave them be, so a
        # config written for a level still runs on a prompt file or the pictures (quickstart.yaml prompts.path=...)
        # (the default is no choice: a resolved config, which spells out every default, loads again)
        if self.builtin == "arithmetic" and self.max_operand != MAX_OPERAND and not LEVELS[self.level].word:
            raise ValueError(f"max_operand applies to the word levels; level {self.level} has fixed digits")
        return self


class EngineConfig(Strict):
    """How each vLLM engine starts, and how many run."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_gib: int | None = Field(
        None, ge=1, description="CPU only: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)"
    )
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(1, ge=1)
    num_gpus: float = Field(0, ge=0, description="GPUs per engine actor (0 runs on CPU)")
    num_cpus: float = Field(1, gt=0, description="CPUs reserved per engine actor")
    cpu_reserved_cores: int = Field(
        0, ge=0, description="CPU only: cores vLLM keeps free of compute (VLLM_CPU_NUM_OF_RESERVED_CPU)"
    )
    multiprocessing: bool | None = Field(
        None,
        description="the engine core in a process of its own (vLLM's default); unset: on with GPUs, off on CPU, "
        "where the engine then starts about 12 s sooner at the same speed",
    )
    vllm_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="further vllm.LLM keyword arguments, passed as given"
    )
    max_restarts: int = Field(
        3, ge=0, description="times a crashed engine actor is restarted and its shard retried"
    )
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _actors(self) -> EngineConfig:
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be >= min_actors")
        if self.num_gpus and self.num_gpus < self.tensor_parallel_size:
            raise ValueError("num_gpus per engine must cover tensor_parallel_size")
        return self


class JudgePoolConfig(Strict):
    """The judge stage's Ray actors; every judge a config names runs in each of them.

    API judges' ``requests_per_min`` and ``tokens_per_min`` are totals: each actor gets its share.
    """

    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1, description="more actors judge more shards at once")
    num_cpus: float = Field(1, gt=0, description="CPUs reserved per judge actor")
    max_restarts: int = Field(3, ge=0, description="times a lost judge actor is restarted and its shard retried")

    @model_validator(mode="after")
    def _actors(self) -> JudgePoolConfig:
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be >= min_actors")
        return self


class TeacherConfig(Strict):
    """The stronger model that writes SelFee's feedback and revisions (the paper distils ChatGPT).

    ``kind: openai`` is any OpenAI-compatible chat API; the key is read from ``api_key_env`` when a
    request is made and never stored. ``kind: vllm`` runs ``model`` (an HF name or folder) in a
    second vLLM engine inside each generation actor.
    """

    kind: Literal["openai", "vllm"] = "openai"
    model: str = Field(..., description="openai: the API's model name; vllm: an HF name or local folder")
    answers: Literal["teacher", "policy"] = Field(
        "teacher", description="who writes the initial answer (SelFee: the teacher, ChatGPT, wrote it too)"
    )
    temperature: float | None = Field(None, ge=0, description="default: generate's temperatures")
    max_tokens: int | None = Field(None, ge=1, description="new tokens per teacher turn (default: generate.max_tokens)")
    # openai
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = Field("OPENAI_API_KEY", description="NAME of the env var holding the key")
    concurrency: int = Field(16, ge=1, description="requests in flight at once, per generation actor")
    requests_per_min: float | None = Field(None, gt=0, description="per generation actor")
    tokens_per_min: float | None = Field(None, gt=0, description="per generation actor")
    timeout_s: float = Field(120.0, gt=0, description="per request")
    max_retries: int = Field(5, ge=0, description="on 429, 5xx, timeouts and cut connections")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    max_backoff_s: float = Field(60.0, ge=0)
    cache_dir: str | None = Field(
        None, description="answers cached on disk: a redone shard gets the same text (default: RUN_DIR/teacher_cache)"
    )
    # vllm
    engine: EngineConfig | None = Field(
        None, description="vllm: the teacher engine's settings (default: generate.engine)"
    )


# Teacher settings that change how fast or where it runs, not what it writes: not in the fingerprint.
TEACHER_PLACEMENT = {
    "concurrency",
    "requests_per_min",
    "tokens_per_min",
    "timeout_s",
    "max_retries",
    "backoff_s",
    "max_backoff_s",
    "cache_dir",
    "engine",
}


class GenerateConfig(Strict):
    mode: str = Field(
        "two_attempt",
        description="two_attempt: attempt 1, review prompt, attempt 2 (SCL, SCoRe); selfee: answer, "
        "feedback, revision chains; sima: one greedy plus sampled responses; single: n samples; or "
        "'package.module:Name' for your own (datagen.modes)",
    )
    n: int = Field(4, ge=1, description="samples per prompt")
    max_tokens: int = Field(256, ge=1, description="new tokens per turn")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1)
    second_temperature: float | None = Field(None, ge=0, description="attempt 2 temperature (default: temperature)")
    review_prompt: str = Field("scl", description="'scl', 'score' or the text of your own instruction")
    system_prompt: str | None = None
    max_revisions: int = Field(3, ge=1, description="SelFee: revision rounds at most")
    enforce_revisions: int = Field(0, ge=0, description="SelFee: revise at least this many times")
    selfee_format: Literal["dialogue", "chain"] = Field(
        "dialogue",
        description="SelFee: dialogue asks for each feedback and revision in a turn of its own (the paper's data "
        "generation); chain has the model write answer, feedbacks and revisions in one reply, as a model "
        "trained on SelFee chains does (the paper's inference)",
    )
    teacher: TeacherConfig | None = Field(
        None, description="SelFee dialogue: who writes feedback and revisions (None: the policy itself)"
    )
    shard_size: int = Field(32, ge=1, description="prompts per output shard (the unit of resume)")
    engine: EngineConfig = EngineConfig()

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        MODES.get(mode)  # ValueError naming the known ones
        return mode

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if self.enforce_revisions > self.max_revisions:
            raise ValueError("enforce_revisions must be <= max_revisions")
        if self.teacher is not None and (self.mode != "selfee" or self.selfee_format != "dialogue"):
            raise ValueError("generate.teacher only applies to mode: selfee with selfee_format: dialogue")
        if self.mode == "sima" and self.n < 2:
            raise ValueError("sima mode needs n >= 2 (one greedy plus sampled responses)")
        return self

    def review_text(self, task: str | None = None) -> str:
        """The review instruction's text, for a prompt of ``task`` (a code prompt gets the code version)."""
        name = CODE_REVIEW_PROMPTS.get(self.review_prompt) if task == "code" else None
        return REVIEW_PROMPTS.get(name or self.review_prompt, self.review_prompt)
