"""Fixtures: a real server on a free loopback port serving the tiny model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

from huarizo.serve import RunningServer, ServeConfig, start_server


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """The tiny model behind `huarizo serve`'s app, no auth."""
    with start_server(ServeConfig(model=str(tiny_model_dir), port=0, model_name="tiny-test")) as running:
        yield running


@pytest.fixture(scope="session")
def keyed_server(tiny_model_dir: Path) -> Iterator[RunningServer]:
    """The tiny model served with two accepted API keys."""
    cfg = ServeConfig(model=str(tiny_model_dir), port=0, api_keys=["k1", "k2"], max_batch_size=4)
    with start_server(cfg) as running:
        yield running
