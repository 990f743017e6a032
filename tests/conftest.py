"""Shared fixtures: random tiny PaliGemma checkpoint folders (made once per test session, offline)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the hub

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pg_vla.model.paligemma.tiny_checkpoint import make_tiny_paligemma_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the "gqa" tiny PaliGemma (hub key layout, single model.safetensors, seed 0)."""
    return make_tiny_paligemma_checkpoint(tmp_path_factory.mktemp("tiny_paligemma_gqa"), variant="gqa", seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir_odd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the "odd_head_dim" tiny PaliGemma (head_dim 24 != hidden 48 / 4 heads, 1 KV head)."""
    return make_tiny_paligemma_checkpoint(
        tmp_path_factory.mktemp("tiny_paligemma_odd_head_dim"), variant="odd_head_dim", seed=0
    )


# The suite runs in one process and uses both tensorflow (RLDS tests) and bitsandbytes; tensorflow
# imported first makes a later bitsandbytes import abort, so bitsandbytes goes first.
from pg_vla.utils.imports import import_bitsandbytes  # noqa: E402

import_bitsandbytes()
