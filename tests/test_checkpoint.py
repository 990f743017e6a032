"""pg-vla model checkpoints: round trip, atomic writes, clear errors for bad files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pg_vla.model.checkpoint import load_model, save_model
from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.pizero import PiZero


def _model() -> PiZero:
    torch.manual_seed(0)
    return PiZero(PiZeroConfig.preset("tiny", time_conditioning="adaln", cond_steps=2)).eval()


def _inputs(cfg: PiZeroConfig):
    gen = torch.Generator().manual_seed(1)
    s = cfg.vision.image_size
    return (
        torch.rand(1, cfg.num_views, 3, s, s, generator=gen) * 2 - 1,
        torch.randint(4, 100, (1, cfg.max_text_tokens), generator=gen),
        None,
        torch.rand(1, cfg.cond_steps, cfg.proprio_dim, generator=gen),
        torch.randn(1, cfg.horizon_steps, cfg.action_dim, generator=gen),
    )


def test_round_trip_restores_config_and_outputs(tmp_path):
    model = _model()
    path = save_model(model, tmp_path / "ckpt" / "model.safetensors", metadata={"step": "12"})
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temporary file left
    loaded = load_model(path)
    assert loaded.config == model.config
    images, text, mask, proprio, noise = _inputs(model.config)
    expected = model.sample_actions(images, text, mask, proprio, noise=noise)
    assert torch.equal(loaded.sample_actions(images, text, mask, proprio, noise=noise), expected)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    model = _model()
    path = save_model(model, tmp_path / "model.safetensors")
    before = path.read_bytes()

    class Boom(RuntimeError):
        pass

    def failing_state_dict(*args, **kwargs):
        raise Boom("disk full")

    model.state_dict = failing_state_dict
    with pytest.raises(Boom):
        save_model(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    good = save_model(_model(), tmp_path / "good.safetensors").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a pg-vla model checkpoint"):
        load_model(foreign)
