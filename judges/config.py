"""Typed settings of every built-in judge: every default lives here.

A config's ``judges:`` section maps an *instance name* (the prefix of the judge's columns) to its
settings. The judge type is ``type:`` when given, else the instance name itself when that is a
registered type, so ``judges.openai.model=NAME`` on the command line adds the API judge. A
``type: "package.module:Name"`` loads a user's judge; its class may define ``Settings`` (a
pydantic model with a ``type`` field) to have its keys checked, else the keys pass as given.
With no ``judges:`` section the verifier runs; ``judges.NAME=false`` turns a judge off.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class JudgeSettings(BaseModel):
    """Base of every judge's settings: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    type: str
    batch_size: int = Field(64, ge=1, description="rows handed to the judge at a time")


class CustomSettings(JudgeSettings):
    """Settings of a user's judge class that declares no ``Settings`` model: any keys pass."""

    model_config = ConfigDict(extra="allow")


class VerifierSettings(JudgeSettings):
    """Ground-truth checks: math answers against the reference, code against its tests."""

    type: Literal["verifier"] = "verifier"
    math_timeout_s: int = Field(5, ge=1, description="sympy parsing/comparison limit per answer")
    explicit_answers_only: bool = Field(
        False,
        description="math: credit only an explicit final statement (\\boxed{}, ## A ##, 'the answer is ...'), not "
        "a closing sentence that merely ends on a number; for RL rewards, which a policy learns to game",
    )
    code_timeout_s: float = Field(10.0, gt=0, description="wall-clock limit per test run")
    code_memory_mb: int = Field(1024, ge=64, description="address-space limit of a test run")
    code_max_procs: int = Field(64, ge=1, description="process limit of a test run (stops fork bombs)")
    code_workers: int = Field(2, ge=1, description="test runs at once")
    code_python: str | None = Field(None, description="interpreter for tests (default: the base of this one)")
    code_tmpfs_mb: int = Field(64, ge=1, description="size of each of a test run's /tmp, /dev/shm and /work")
    unsafe_code: bool = Field(
        False,
        description="run generated code even where no sandbox isolation (namespaces) can be had; "
        "otherwise such rows are flagged, not run",
    )


class RewardModelSettings(JudgeSettings):
    """A sequence-classification reward model (Starling-RM style): one scalar per response."""

    type: Literal["reward_model"] = "reward_model"
    model: str = Field(..., description="HF name or local folder of an AutoModelForSequenceClassification")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(2048, ge=16, description="tokens per (prompt, response); longer is truncated")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    num_gpus: float = Field(0, ge=0, description="GPUs per actor (0: CPU)")
    score_index: int = Field(0, ge=0, description="which logit is the reward")


class OpenAISettings(JudgeSettings):
    """An OpenAI-compatible chat API as judge (GPT-4 class): pointwise 1-10 or pairwise preference."""

    type: Literal["openai"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key_env: str = Field("OPENAI_API_KEY", description="NAME of the env var holding the key")
    mode: Literal["pointwise", "pairwise"] = "pointwise"
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(512, ge=1)
    concurrency: int = Field(16, ge=1, description="requests in flight at once")
    requests_per_min: float | None = Field(None, gt=0)
    tokens_per_min: float | None = Field(None, gt=0)
    timeout_s: float = Field(60.0, gt=0, description="per request")
    max_retries: int = Field(5, ge=0, description="on 429, 5xx, timeouts and cut connections")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    max_backoff_s: float = Field(60.0, ge=0)
    max_reasks: int = Field(2, ge=0, description="re-asks when the answer is not the asked-for JSON")
    json_mode: bool = Field(False, description="send response_format=json_object (not every server has it)")
    cache_dir: str | None = Field(None, description="default: RUN_DIR/judge_cache/NAME")
    judge_version: str = Field("1", description="change to invalidate cached answers")
    batch_size: int = Field(256, ge=1)


class SelfCriticSettings(JudgeSettings):
    """The policy model itself (in vLLM) picks the better of two responses (SIMA)."""

    type: Literal["self_critic"] = "self_critic"
    model: str | None = Field(None, description="default: the config's model")
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    few_shot: bool = True
    order: Literal["pair", "swapped", "both"] = Field(
        "pair",
        description="pair: the row's pair in order (for SIMA rows the greedy response first); swapped: the second "
        "first, as SIMA's seed shows the sampled response before the greedy one (the verdict is mapped back); both: "
        "asked in each order, a verdict kept only where the two agree (else a tie): position bias cancelled",
    )
    verdict: Literal["written", "forced"] = Field(
        "written",
        description="written: the critic writes a judgement ending in [[1]] or [[2]]; forced: its answer begins "
        "'[[' and the verdict is whichever of 1 and 2 it finds more probable next (one token, for critics too small "
        "to write the format: the default model writes it on 2 of 256 pairs)",
    )
    batch_size: int = Field(256, ge=1)
    engine: dict[str, Any] = Field(
        default_factory=dict,
        description="vllm.LLM keyword arguments (the judge stage fills them from generate.engine)",
    )
    num_gpus: float = Field(0, ge=0, description="GPUs per actor (the judge stage takes generate.engine's)")


class EmbeddingSettings(JudgeSettings):
    """Sentence-embedding cosine similarity to the reference, and near-duplicate flags."""

    type: Literal["embedding"] = "embedding"
    model: str | None = Field(None, description="HF encoder folder/name (default: bundled all-MiniLM-L6-v2)")
    dup_threshold: float = Field(0.95, gt=-1, le=1, description="cosine above which a sample is a duplicate")
    max_length: int = Field(256, ge=8)
    batch_size: int = Field(64, ge=1)
    num_gpus: float = Field(0, ge=0)


BUILTIN_SETTINGS: dict[str, type[JudgeSettings]] = {
    "verifier": VerifierSettings,
    "reward_model": RewardModelSettings,
    "openai": OpenAISettings,
    "self_critic": SelfCriticSettings,
    "embedding": EmbeddingSettings,
}


def _errors(prefix: str, err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        key = ".".join([prefix, *(str(p) for p in e["loc"])])
        out.append(f"{key}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}")
    return out


def judge_settings(name: str, raw: Any) -> JudgeSettings:
    """Validate one entry of ``judges:``; errors name ``judges.NAME.KEY``."""
    where = f"judges.{name}"
    if not NAME_RE.match(name):
        raise ValueError(f"{where}: a judge name must be letters, digits and '_' (it prefixes columns)")
    if isinstance(raw, JudgeSettings):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(raw).__name__}")
    data = dict(raw)
    type_name = data.setdefault("type", name if name in BUILTIN_SETTINGS else None)
    if type_name is None:
        raise ValueError(f"{where}: set type: one of {sorted(BUILTIN_SETTINGS)} or 'package.module:Name'")
    settings_cls = BUILTIN_SETTINGS.get(type_name)
    if settings_cls is None:
        from judges.base import load

        cls = load(type_name)
        settings_cls = getattr(cls, "Settings", None) or CustomSettings
    try:
        return settings_cls.model_validate(data)
    except ValidationError as e:
        raise ValueError("; ".join(_errors(where, e))) from None


def _validate_all(judges: dict[str, Any]) -> dict[str, JudgeSettings]:
    errors, out = [], {}
    for name, raw in judges.items():
        if raw is False:
            continue  # `judges.verifier=false` turns a judge off; `verifier:` with no value runs it
        try:
            out[name] = judge_settings(name, raw)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("; ".join(errors))
    return out


#: The type of ``Config.judges``: instance name -> that judge's validated settings.
JudgesConfig = Annotated[dict[str, Any], AfterValidator(_validate_all)]


def default_judges() -> dict[str, JudgeSettings]:
    """What runs when a config names no judges: the ground-truth verifier (the reward of SCoRe and SCL)."""
    return {"verifier": VerifierSettings()}
