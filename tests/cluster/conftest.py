"""Fixtures of the cluster tests: a real `ray start --head` cluster per test, or per module."""

from __future__ import annotations

import pytest
from head_node import ray_head_cluster


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    with ray_head_cluster(tmp_path, monkeypatch) as url:
        yield url


@pytest.fixture(scope="module")
def ray_head_module(tmp_path_factory):
    """One head shared by a module's tests (starting one takes 10-30 s here)."""
    with pytest.MonkeyPatch.context() as mp, ray_head_cluster(tmp_path_factory.mktemp("rayhead"), mp) as url:
        yield url
