"""Smoke test of scripts/bench/inference.py (the package pg_vla.bench): the target suite on the tiny preset, on CPU.

The suite's structure is the one a GPU run of the full-size pi0 produces; here every target runs
with one timed call, so the numbers are checked for shape and sanity only.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from pg_vla.model.vla.config import PiZeroConfig
from pg_vla.model.vla.flops import sampling_flops, train_step_flops

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["inference_b1", "inference_b8_chunk50_3cams", "precision_gap", "train_b16", "train_b32", "max_batch"]


def check_roofline(entry: dict, peak_matmul: dict, flops_per_call: int) -> None:
    """The entry's `roofline` recomputed from the measured peak, its median latency and the analytic FLOPs."""
    roofline = entry["roofline"]
    peak_flops_per_s = peak_matmul["tflops"] * 1e12
    assert math.isclose(roofline["peak_gflops"], peak_flops_per_s / 1e9, rel_tol=1e-6)
    assert roofline["flops_per_call"] == flops_per_call
    limit_ms = flops_per_call / peak_flops_per_s * 1e3
    assert math.isclose(roofline["limit_ms"], limit_ms, rel_tol=1e-4)
    assert math.isclose(roofline["achieved_fraction"], limit_ms / entry["median_ms"], rel_tol=1e-4)
    assert math.isclose(roofline["achieved_fraction"], entry["mfu"], rel_tol=2e-2)  # the same ratio


def test_target_suite_on_cpu(tmp_path: Path):
    profile_dir = tmp_path / "profiles"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "bench" / "inference.py"),
        "--suite",
        "targets",
        "--device",
        "cpu",
        "--config",
        "tiny",
        "--runs",
        "1",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--max_batch_limit",
        "4",
        "--max_batch_steps",
        "1",
        "--profile",
        str(profile_dir),
        "--profile_calls",
        "1",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)  # exactly one JSON document on stdout

    assert document["suite"] == "targets"
    results = {r["target"]: r for r in document["results"]}
    assert list(results) == TARGETS
    assert set(document["summary"]) == {f"tiny/{t}" for t in TARGETS}
    for result in results.values():
        assert (result["config"], result["dtype"], result["device"], result["compile"]) == (
            "tiny",
            "bfloat16",
            "cpu",
            False,
        )
        assert result["peak_matmul"]["tflops"] > 0
        assert result["sdpa_backends"] == {"skipped": "CUDA only (torch.nn.attention.sdpa_kernel backends)"}
        assert "error" not in result and "skipped" not in result

    # inference: 1 camera, chunk 4 at batch 1; 3 cameras, chunk 50 at batch 8; 20 text tokens, 10 flow steps
    for target, batch, cameras, horizon in (("inference_b1", 1, 1, 4), ("inference_b8_chunk50_3cams", 8, 3, 50)):
        result = results[target]
        assert (result["batch_size"], result["num_cameras"], result["horizon_steps"]) == (batch, cameras, horizon)
        assert (result["max_text_tokens"], result["num_steps"]) == (20, 10)
        entry = result["modes"]["sample_cached"]
        cfg = PiZeroConfig.preset("tiny", num_cameras=cameras, horizon_steps=horizon, max_text_tokens=20)
        assert entry["flops"] == sampling_flops(cfg, 10, use_cache=True, batch=batch)
        assert entry["median_ms"] > 0 and entry["achieved_tflops"] > 0 and entry["mfu"] > 0
        # MFU is achieved over the measured matmul peak of the same dtype; on a CPU without native bf16 (no
        # AMX / AVX512-BF16) that "peak" is an emulated 2048^2 matmul and can be below what a tiny model's
        # small ops reach, so only the ratio is checked, not a bound.
        assert math.isclose(entry["mfu"], entry["achieved_tflops"] / result["peak_matmul"]["tflops"], rel_tol=2e-2)
        check_roofline(entry, result["peak_matmul"], sampling_flops(cfg, 10, use_cache=True, batch=batch))
        assert entry["profile"]["top_ops"] and Path(entry["profile"]["trace"]).is_file()
        assert {"name", "calls", "self_cpu_ms"} <= set(entry["profile"]["top_ops"][0])

    gap = results["precision_gap"]["modes"]["precision_gap"]
    for key in ("mean_l1", "max_abs_diff"):
        assert math.isfinite(gap[key]) and 0 <= gap[key]
    assert gap["mean_l1"] < 5e-3 and gap["max_abs_diff"] < 5e-2  # bf16 rounding, not a wrong cache
    assert gap["float32_cached"]["max_abs_diff"] < 1e-4
    assert gap["meets_target"] == (gap["mean_l1"] < gap["target_mean_l1"])

    train_cfg = PiZeroConfig.preset("tiny", num_cameras=1, horizon_steps=4, max_text_tokens=20)
    for target, batch in (("train_b16", 16), ("train_b32", 32)):
        entry = results[target]["modes"]["train_step"]
        assert (entry["batch_size"], entry["optimizer"], entry["gradient_checkpointing"]) == (batch, "adamw8bit", False)
        assert entry["flops_per_sample"] == train_step_flops(train_cfg)
        assert entry["mfu"] > 0 and entry["achieved_tflops"] > 0 and entry["peak_memory_mib"] > 0
        peak = results[target]["peak_matmul"]["tflops"]
        assert math.isclose(entry["mfu"], entry["achieved_tflops"] / peak, rel_tol=2e-2)  # no bound: see above
        check_roofline(entry, results[target]["peak_matmul"], train_step_flops(train_cfg) * batch)
        assert math.isfinite(entry["last_loss"])

    searched = results["max_batch"]["max_batch"]
    assert set(searched) == {"without_gradient_checkpointing", "with_gradient_checkpointing"}
    for key, entry in searched.items():
        assert entry["gradient_checkpointing"] == (key == "with_gradient_checkpointing")
        assert 1 <= entry["max_batch"] <= entry["limit"] == 4
        assert [row["batch"] for row in entry["tried"]][:3] == [1, 2, 4]
    assert len(list(profile_dir.glob("*.json"))) == 4  # one trace per timed mode


def test_train_step_and_forward_backward_workloads():
    """`train_step` moves the weights like the trainer (clipped gradients); `train_forward_backward` leaves
    them as they were and drops the gradients."""
    import argparse

    import torch

    from pg_vla.bench.workload import bench_optimizer, build_config, make_inputs, make_train_step
    from pg_vla.model.vla.pizero import PiZero

    cfg = build_config("tiny", argparse.Namespace())
    torch.manual_seed(0)
    model = PiZero(cfg).train()
    inputs = make_inputs(cfg, 2, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    loss = make_train_step(model, inputs, None)()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

    optimizer = bench_optimizer("adamw", model)
    make_train_step(model, inputs, optimizer)()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "joint.experts.action.layers.0.mlp.down_proj.weight" in moved
    assert all(p.grad is None for p in model.parameters())
