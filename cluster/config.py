"""The experiment config: one typed model composed of each package's own settings.

A YAML file holds only what differs from the defaults; ``KEY=VALUE`` arguments (dotted keys, YAML
values) override it. Unknown keys and bad values fail here, naming the file and the key, before
Ray starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from datagen.arithmetic import LEVELS
from datagen.config import MAX_OPERAND, GenerateConfig, JudgePoolConfig, PromptsConfig, Strict
from datagen.storage import Location, as_location, is_uri
from judges.config import JudgesConfig, default_judges
from rl.config import PASS_RATES_FILE, BuildConfig, CalibrateConfig, EvalConfig, TrainConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message names the source and the key."""


class RayConfig(Strict):
    address: str | None = Field(None, description="None starts a local Ray; 'auto' joins a cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (default: all)")
    include_dashboard: bool | None = None
    namespace: str = "selfcorrect"


class Config(Strict):
    run_dir: str = Field("runs/quickstart", description="where every stage writes")
    model: str = Field("smollm2-135m-instruct", description="built-in alias, HF name or local folder")
    model_cache: str = Field(
        "~/.cache/selfcorrect/models", description="where built-in models are converted to HF folders"
    )
    seed: int = 0
    ray: RayConfig = RayConfig()
    prompts: PromptsConfig = PromptsConfig()
    generate: GenerateConfig = GenerateConfig()
    judges: JudgesConfig = Field(default_factory=default_judges, description="instance name -> settings")
    judge_pool: JudgePoolConfig = JudgePoolConfig()
    build: BuildConfig = BuildConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    calibrate: CalibrateConfig = CalibrateConfig()

    @field_validator("run_dir", "model_cache")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Ray Train workers run in a directory of their own: a relative path must not reach them.
        # A URI (s3://bucket/run) is kept as is.
        return value if is_uri(value) else str(Path(value).expanduser().absolute())

    @field_validator("train")
    @classmethod
    def _known_algorithm(cls, train: TrainConfig) -> TrainConfig:
        from rl.algorithms import ALGORITHMS

        try:
            ALGORITHMS.get(train.algorithm)
        except ValueError as e:  # it names the known ones
            raise ValueError(f"algorithm: {e}") from None
        return train

    @model_validator(mode="after")
    def _selfee_threshold(self) -> Config:
        # the threshold is in the units of the judge build.judge names: known once the judges are
        if self.build.builder == "selfee":
            from rl.builders import selfee_threshold

            selfee_threshold(self.build, self.judges)
        return self

    @model_validator(mode="after")
    def _prompts_of_the_run(self) -> Config:
        held_out = self.eval.prompts
        if self.prompts.builtin == "arithmetic" and held_out.builtin == "arithmetic" and "level" not in (
            held_out.model_fields_set
        ):
            # evaluated on the level it is trained on
            if held_out.max_operand != MAX_OPERAND and not LEVELS[self.prompts.level].word:
                raise ValueError(
                    f"eval.prompts.max_operand applies to the word levels; eval.prompts.level follows prompts.level "
                    f"({self.prompts.level}), which has fixed digits"
                )
            object.__setattr__(held_out, "level", self.prompts.level)
        rates = self.prompts.pass_rate
        if rates is not None and rates.file is None:
            where = as_location(self.run_dir) / "calibrate" / PASS_RATES_FILE
            object.__setattr__(rates, "file", str(where))
        return self

    def stage_dir(self, stage: str) -> Location:
        return as_location(self.run_dir) / stage


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted KEY")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (YAML, or None for the defaults), apply ``overrides`` and validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror}") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        tree = loaded or {}
    if overrides:
        extra = parse_overrides(overrides)
        if "judges" in extra and "judges" not in tree:
            # `judges.NAME.KEY=...` adds a judge to the default set rather than replacing it
            tree["judges"] = {name: {} for name in default_judges()}
        tree = _merge(tree, extra)
        source += " + overrides"
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None
