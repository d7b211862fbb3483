"""The examples in the packages' docstrings run as tests (each module that has any)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("datagen", "judges", "rl", "cluster")
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for package in PACKAGES
    for p in (ROOT / package).rglob("*.py")
    if ">>> " in p.read_text()
)


def test_the_examples_are_found():
    assert {"datagen.registry", "rl.score_math", "judges.base"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
