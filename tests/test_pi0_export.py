"""A pg-vla training checkpoint exported in pi0's layout, loaded by transformers' PI0 and by pg-vla again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import PI0ForConditionalGeneration

from pg_vla.model.checkpoint import load_model
from pg_vla.model.paligemma.loading import CheckpointError
from pg_vla.model.vla.pizero import PiZero

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "scripts" / "export_checkpoint.py"


@pytest.fixture(scope="module")
def exported(tiny_policy_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "pi0"
    result = subprocess.run(
        [
            sys.executable,
            str(EXPORT),
            "--checkpoint_path",
            str(tiny_policy_checkpoint.parent.parent),
            "--output_dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_transformers_loads_the_export_with_no_missing_or_unexpected_keys(exported):
    model, info = PI0ForConditionalGeneration.from_pretrained(exported, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert {p.name for p in exported.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "statistics",
        "README.md",
        "pg_vla_training_config.json",
        "tokenizer_config.json",
    }
    assert "bridge_dataset" in (exported / "README.md").read_text()


def test_transformers_velocities_equal_pg_vlas(exported, tiny_policy_checkpoint):
    ours = load_model(tiny_policy_checkpoint / "model.safetensors")
    reference = PI0ForConditionalGeneration.from_pretrained(exported).eval()
    cfg = ours.config
    gen = torch.Generator().manual_seed(0)
    b, size, length = 2, cfg.vision.image_size, 6
    images = torch.rand(b, 1, 3, size, size, generator=gen) * 2 - 1
    text = torch.randint(3, cfg.image_token_id, (b, length), generator=gen)
    text_mask = torch.ones(b, length, dtype=torch.bool)
    text_mask[0, 3:] = False
    state = torch.randn(b, cfg.proprio_dim, generator=gen)
    x_t = torch.randn(b, cfg.horizon_steps, cfg.action_dim, generator=gen)
    time = torch.tensor([0.2, 0.8])
    image_tokens = cfg.vision.num_patches
    ids = torch.cat((torch.full((b, image_tokens), cfg.image_token_id), text), dim=1)
    mask = torch.cat((torch.ones(b, image_tokens, dtype=torch.long), text_mask.long()), dim=1)
    with torch.no_grad():
        expected = reference(
            state=state,
            noise=x_t,
            timestep=time,
            input_ids=ids,
            pixel_values=images,
            attention_mask=mask,
            pixel_attention_mask=torch.ones(b, 1, dtype=torch.bool),
        ).logits
        got = ours.predict_velocity(images, text, text_mask, state[:, None], x_t, time)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert expected.abs().max() > 1e-2


def test_pg_vla_reloads_the_export_to_identical_tensors(exported, tiny_policy_checkpoint):
    original = load_model(tiny_policy_checkpoint / "model.safetensors").state_dict()
    reloaded = PiZero.from_pretrained(exported).state_dict()
    assert reloaded.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(reloaded[key], tensor), key


def test_unexportable_models_are_refused_before_anything_is_written(tmp_path, tiny_checkpoint_dir, capsys):
    import importlib.util

    from conftest import make_policy_checkpoint

    spec = importlib.util.spec_from_file_location("export_checkpoint", EXPORT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    for overrides, reason in (
        ({"action_head": "discrete"}, "action_head='discrete'"),
        ({"time_conditioning": "adaln"}, "time_conditioning='adaln'"),
        ({"cond_steps": 2}, "cond_steps=2"),
    ):
        name = next(iter(overrides))
        ckpt = make_policy_checkpoint(tmp_path / name / "checkpoints", tiny_checkpoint_dir, **overrides)
        out = tmp_path / f"out_{name}"
        assert script.main(["--checkpoint_path", str(ckpt), "--output_dir", str(out)]) == 2  # the command, in-process
        err = capsys.readouterr().err
        assert "cannot be written in pi0's layout" in err and reason in err
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_export_never_overwrites_and_only_takes_pg_vla_checkpoints(tmp_path, tiny_policy_checkpoint, exported):
    from pg_vla.model.export import export_pi0

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_pi0(tiny_policy_checkpoint, busy)
    assert (busy / "keep.txt").read_text() == "mine"
    with pytest.raises(CheckpointError, match="not a pg-vla checkpoint"):
        export_pi0(exported, tmp_path / "again")
