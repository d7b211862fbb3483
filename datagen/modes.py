"""Generate modes by name (``generate.mode``): the turn structures of ``datagen.turns`` and SelFee's of
``datagen.selfee`` register here, or ``"package.module:Name"`` names your own.

A mode is ``mode(prompts, cfg, complete, *, model, seed, teach) -> rows``: it issues ``Request`` batches to
``complete`` and returns the sample rows, in (prompt, sample_idx) order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datagen.registry import Registry

Mode = Callable[..., list[dict[str, Any]]]
MODES: Registry[Mode] = Registry("generate mode", builtins=("datagen.turns", "datagen.selfee"))
