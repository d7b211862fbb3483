"""Training algorithms by name (``train.algorithm``): DPO and SFT through TRL (``rl.train``), SCoRe's own
on-policy loop (``rl.score``), or ``"package.module:Name"`` naming a user's ``TrainAlgorithm``.

An algorithm plans (checks before Ray starts what can be refused, and fingerprints the settings that
shape its model) and runs (the train stage's folder may be on object storage). It says what else it
needs of a run: whether it trains on the offline generate -> judge -> build data, how many rollout
engines it starts beside its trainers, and the review prompt an eval of its model should ask with.
Each method imports its module when called, so naming an algorithm costs no import.
"""

from __future__ import annotations

from typing import Any, Protocol

from datagen.config import GenerateConfig
from datagen.registry import Registry
from datagen.storage import Location
from rl.config import TrainConfig, TrainInputs


class Plan(Protocol):
    fingerprint: dict[str, Any]


class TrainAlgorithm:
    """Base of an algorithm; subclasses implement ``plan`` and ``run``."""

    offline_data: bool = True  # trains on the build stage's output, made by generate -> judge -> build

    def plan(self, inputs: TrainInputs) -> Plan:
        raise NotImplementedError

    def run(self, plan: Any, out_dir: Location, overwrite: bool) -> dict[str, Any]:
        raise NotImplementedError

    def rollout_engines(self, train: TrainConfig) -> tuple[int, str]:
        """vLLM engines it starts beside the trainers (each with ``generate.engine``'s settings), and the key
        that sets how many."""
        return 0, ""

    def review_prompt(self, train: TrainConfig) -> str | None:
        """The review prompt the eval asks its model with (None: the config's ``generate.review_prompt``)."""
        return None

    def sampling(self, train: TrainConfig, generate: GenerateConfig) -> GenerateConfig:
        """How the model is sampled for training: ``generate`` for the offline data; an on-policy algorithm's
        own instruction, temperature and length (what ``selfcorrect calibrate`` measures the model under)."""
        return generate


class TRL(TrainAlgorithm):
    """DPO or SFT with TRL's trainers on Ray Train, over the build stage's pairs or chains."""

    def plan(self, inputs: TrainInputs) -> Plan:
        from rl.train import plan_train

        return plan_train(inputs)

    def run(self, plan: Any, out_dir: Location, overwrite: bool) -> dict[str, Any]:
        from rl.train import run_train

        return run_train(plan.train, plan.model_path, plan.build, out_dir, overwrite, report=plan.report)


class SCoRe(TrainAlgorithm):
    """SCoRe's two-stage multi-turn RL on its own on-policy rollouts (``train.score``)."""

    offline_data = False

    def plan(self, inputs: TrainInputs) -> Plan:
        from datagen.prompts import load_prompts
        from rl.score import plan_score

        return plan_score(inputs, load_prompts(inputs.prompts))

    def run(self, plan: Any, out_dir: Location, overwrite: bool) -> dict[str, Any]:
        from rl.score import run_score

        return run_score(plan, out_dir, overwrite)

    def rollout_engines(self, train: TrainConfig) -> tuple[int, str]:
        return train.score.rollout_actors, "train.score.rollout_actors"

    def review_prompt(self, train: TrainConfig) -> str | None:
        return train.score.review_prompt  # evaluated with the instruction it was trained to answer

    def sampling(self, train: TrainConfig, generate: GenerateConfig) -> GenerateConfig:
        s = train.score
        update = {"review_prompt": s.review_prompt, "temperature": s.temperature}
        return generate.model_copy(update={**update, "max_tokens": s.max_tokens or generate.max_tokens})


def _instance(spec: str, obj: Any) -> TrainAlgorithm:
    algorithm = obj() if isinstance(obj, type) else obj
    if not callable(getattr(algorithm, "plan", None)) or not callable(getattr(algorithm, "run", None)):
        raise ValueError(f"training algorithm {spec!r} has no plan(inputs) and run(plan, out_dir, overwrite)")
    return algorithm


ALGORITHMS: Registry[TrainAlgorithm] = Registry("training algorithm", adapt=_instance)
ALGORITHMS.register("dpo", TRL())
ALGORITHMS.register("sft", TRL())
ALGORITHMS.register("score", SCoRe())
