"""Quiet consoles (pg_vla.utils.quiet): tensorflow's native log lines and known deprecation notices are kept
off stderr in every entry point and its spawned helper processes; --verbose / PG_VLA_VERBOSE=1 bring them back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pg_vla.utils import quiet

ROOT = Path(__file__).resolve().parents[1]
# Lines exactly as tensorflow 2.21 / tensorflow_datasets 4.9 print them on a CPU machine (copied from a console).
TF_NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796189815.322449   11281 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "I0000 00:00:1796189815.475565   11281 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
    "E0000 00:00:1796189849.443913   11464 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1796189851.320408   11519 tf_record_dataset_op.cc:396] The default buffer size is 262144, which is "
    "overridden by the user specified `buffer_size` of 8388608",
    "W1202 05:37:29.471000  11519 op_level_cost_estimator.cc:699] Error in PredictCost() for the op",
]
KEPT = [
    "E0000 00:00:1796189849.443913   11464 tfrecord_reader.cc:12] DATA_LOSS: corrupted record at 12",
    "Traceback (most recent call last):",
    'ValueError: Invalid argument: "I0000 looks like a log line but is a message"',
    "INFO: pg_vla computing normalization statistics",
]
# What a quiet console must not show (substrings of the lines above and of tensorflow's Python deprecation notices).
NOISE_MARKERS = (
    "absl::InitializeLog",
    "cudart_stub",
    "cpu_feature_guard",
    "cuInit",
    "To enable the following",
    "CounterV2",
    "is deprecated and will be removed",
)


def test_native_log_lines_are_dropped_and_others_kept():
    assert [line for line in TF_NOISE if quiet.keep_line(line.encode())] == []
    assert [line for line in KEPT if quiet.keep_line(line.encode())] == KEPT


def test_configure_removes_the_verbose_flag(monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    argv = ["script.py", "--verbose", "--x", "1"]
    assert quiet.is_verbose(argv) and quiet.configure(argv) and argv == ["script.py", "--x", "1"]
    assert os.environ[quiet.VERBOSE_ENV] == "1"  # helper processes inherit it
    monkeypatch.setenv(quiet.VERBOSE_ENV, "0")
    assert not quiet.is_verbose(["script.py"])


CHILD_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, sys
    from pg_vla.utils import quiet
    quiet.configure()

    def child(lines):
        for line in lines:
            os.write(2, line.encode() + b"\\n")  # as C++ code writes: straight to file descriptor 2
        print("CUDA_VISIBLE_DEVICES=" + repr(os.environ.get("CUDA_VISIBLE_DEVICES")), file=sys.stderr)
        sys.stderr.write("partial line without newline")

    if __name__ == "__main__":
        p = multiprocessing.get_context("spawn").Process(target=child, args=(sys.argv[1:],))
        p.start(); p.join()
        print("\\nparent exit", p.exitcode, file=sys.stderr)
""")


@pytest.mark.parametrize("verbose", [False, True])
def test_spawned_helper_process_is_filtered(tmp_path, verbose):
    script = tmp_path / "entry.py"
    script.write_text(CHILD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in (quiet.VERBOSE_ENV, "CUDA_VISIBLE_DEVICES")}
    args = [sys.executable, str(script), *TF_NOISE, *KEPT] + (["--verbose"] if verbose else [])
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in KEPT + ["partial line without newline", "parent exit 0"]:
        assert line in result.stderr
    if verbose:
        assert all(line in result.stderr for line in TF_NOISE) and "CUDA_VISIBLE_DEVICES=None" in result.stderr
    else:
        assert not [m for m in NOISE_MARKERS if m in result.stderr], result.stderr
        assert "CUDA_VISIBLE_DEVICES=''" in result.stderr  # tensorflow in a helper process sees no GPU


@pytest.mark.slow
def test_tensorflow_script_has_a_quiet_stderr(tmp_path):
    """A real entry point that imports tensorflow and writes a dataset: no native log line, no deprecation notice."""
    env = {k: v for k, v in os.environ.items() if k not in (quiet.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run(
        [
            sys.executable,
            "scripts/data/make_synthetic_rlds.py",
            "--output_dir",
            str(tmp_path),
            "--datasets",
            "bridge_dataset",
            "--episodes_per_split",
            "1",
            "--steps",
            "3",
            "3",
            "--image_size",
            "16",
            "16",
            "--num_shards",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bridge_dataset" / "1.0.0" / "dataset_info.json").is_file()
    assert not [m for m in NOISE_MARKERS if m in result.stderr], result.stderr
