"""Scoring: one Judge protocol, a registry, and the built-in judges.

``judges.base`` holds the protocol, ``JudgeResult`` and the registry (``register``/``load``/
``build``); ``judges.config`` every judge's settings. Importing this package loads neither ray nor
vllm nor torch: judges import their models when they are built.
"""

from judges.base import REGISTRY, BaseJudge, Judge, JudgeResult, build, load, register

__all__ = ["REGISTRY", "BaseJudge", "Judge", "JudgeResult", "build", "load", "register"]
