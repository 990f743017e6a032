"""scripts/infer.py: one action chunk from image files, a state vector and a prompt.

The reference is the in-process `Policy` fed the pixel arrays the test wrote (PNG is lossless), with
the same seed. The command runs as a subprocess; the camera checks with a two-camera checkpoint call
its `main` in-process (same code path, no second interpreter start).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from pg_vla.policy import Observation, Policy

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "infer.py"
PROMPT = "put the carrot on the plate"
STATE = [0.31, -0.02, 0.11, 0.05, -0.1, 0.2, 1.0]
ACTION_ATOL = 1e-6  # the same computation in two processes; JSON carries float32 values exactly


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("infer_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_image(path: Path, seed: int, size: tuple[int, int] = (60, 80)) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_output_equals_in_process_policy(tiny_policy_checkpoint: Path, tmp_path: Path) -> None:
    pixels = _write_image(tmp_path / "frame.png", seed=0)
    out_dir = tmp_path / "predictions"
    done = _run(
        "--checkpoint_path",
        str(tiny_policy_checkpoint),
        "--image1_paths",
        str(tmp_path / "frame.png"),
        "--prompt",
        PROMPT,
        "--state_vector",
        *map(str, STATE),
        "--seed",
        "5",
        "--save_predictions",
        "--output_dir",
        str(out_dir),
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)  # stdout holds the JSON document only

    expected = Policy.from_checkpoint(tiny_policy_checkpoint).infer(
        Observation(images={"primary": pixels}, state=np.array(STATE), prompt=PROMPT), seed=5
    )
    np.testing.assert_allclose(np.array(printed["actions"]), expected["actions"], atol=ACTION_ATOL)
    np.testing.assert_allclose(
        np.array(printed["normalized_actions"]), expected["normalized_actions"], atol=ACTION_ATOL
    )
    assert printed["seed"] == 5 and printed["action_horizon"] == 4 and printed["action_dim"] == 7
    assert printed["images"] == {"primary": str(tmp_path / "frame.png")}

    saved = np.load(out_dir / "actions.npy")
    assert saved.dtype == np.float32 and saved.shape == (4, 7)
    np.testing.assert_array_equal(saved, np.array(printed["actions"], dtype=np.float32))
    assert json.loads((out_dir / "prediction.json").read_text())["actions"] == printed["actions"]


def test_bad_inputs_exit_with_named_errors(
    tiny_policy_checkpoint: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    _write_image(tmp_path / "frame.png", seed=1)
    (tmp_path / "broken.png").write_text("not an image")
    common = ["--checkpoint_path", str(tiny_policy_checkpoint), "--prompt", PROMPT]
    cases = [
        (
            ["--image1_paths", str(tmp_path / "frame.png"), "--state_vector", "0.1", "0.2", "0.3"],
            "error: --state_vector has 3 values, the checkpoint expects 7 (bridge_dataset)",
        ),
        (
            ["--image1_paths", str(tmp_path / "broken.png"), "--state_vector", *map(str, STATE)],
            f"error: --image1_paths: cannot read image {tmp_path / 'broken.png'}",
        ),
        (
            ["--image1_paths", str(tmp_path / "missing.png"), "--state_vector", *map(str, STATE)],
            f"error: --image1_paths: image file {tmp_path / 'missing.png'} does not exist",
        ),
    ]
    script = _load_script()  # the command's main, in-process (the subprocess path is tested above)
    for args, message in cases:
        assert script.main([*common, *args]) == 2
        captured = capfd.readouterr()
        assert message in captured.err, captured.err
        assert captured.out == ""


@pytest.fixture(scope="module")
def two_camera_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint_dir: Path) -> Path:
    """The tiny pi0 with cameras "primary" and "wrist" (a small action expert keeps it quick)."""
    from conftest import make_policy_checkpoint

    folder = make_policy_checkpoint(
        tmp_path_factory.mktemp("two_cameras") / "checkpoints",
        tiny_checkpoint_dir,
        num_cameras=2,
        action_expert={"hidden_size": 32, "intermediate_size": 64},
    )
    (folder / "manifest.json").unlink()  # edited below: the manifest would no longer match
    config = json.loads((folder / "config.json").read_text())
    config["data"]["camera_roles"] = ["primary", "wrist"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_cameras_and_state_are_checked_against_the_checkpoint(
    two_camera_checkpoint: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    script = _load_script()
    first, second = _write_image(tmp_path / "a.png", seed=2), _write_image(tmp_path / "b.png", seed=3, size=(40, 40))
    base = ["--checkpoint_path", str(two_camera_checkpoint), "--prompt", PROMPT, "--seed", "9"]
    state = ["--state_vector", *map(str, STATE)]
    cases = [
        (
            [*base, *state, "--image1_paths", str(tmp_path / "a.png")],
            "the checkpoint reads 2 cameras ['primary', 'wrist']: give --image2_paths for camera 'wrist'",
        ),
        (
            [
                *base,
                *state,
                "--image1_paths",
                str(tmp_path / "a.png"),
                str(tmp_path / "a.png"),
                "--image2_paths",
                str(tmp_path / "b.png"),
            ],
            "--image1_paths got 2 images (an observation history) but the checkpoint reads 1 image per camera",
        ),
        (
            [*base, "--image1_paths", str(tmp_path / "a.png"), "--image2_paths", str(tmp_path / "b.png")],
            "--state_vector is required: give the robot's 7 state values",
        ),
    ]
    for argv, message in cases:
        assert script.main(argv) == 2
        captured = capfd.readouterr()
        assert message in captured.err and captured.out == ""

    assert (
        script.main(
            [*base, *state, "--image1_paths", str(tmp_path / "a.png"), "--image2_paths", str(tmp_path / "b.png")]
        )
        == 0
    )
    printed = json.loads(capfd.readouterr().out)
    expected = Policy.from_checkpoint(two_camera_checkpoint).infer(
        Observation(images={"primary": first, "wrist": second}, state=np.array(STATE), prompt=PROMPT), seed=9
    )
    np.testing.assert_allclose(np.array(printed["actions"]), expected["actions"], atol=ACTION_ATOL)
    assert printed["images"] == {"primary": str(tmp_path / "a.png"), "wrist": str(tmp_path / "b.png")}

    # a one-camera checkpoint has no use for --image2_paths
    with pytest.raises(script.InputError, match="reads 1 camera \\['primary'\\]; --image2_paths has no camera"):
        script.match_cameras([[first], [second]], ["primary"])


def test_seed_outside_the_servers_rule_is_an_argument_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--seed follows the policy server's rule, an integer in [0, 2**63), and is checked before anything loads."""
    missing = str(tmp_path / "no_checkpoint")  # never read: argparse stops first
    done = _run("--checkpoint_path", missing, "--image1_paths", "frame.png", "--prompt", PROMPT, "--seed", "-1")
    assert done.returncode == 2 and done.stdout == ""
    assert "argument --seed: must be an integer in [0, 2**63), got '-1'" in done.stderr

    script = _load_script()
    base = ["--checkpoint_path", missing, "--image1_paths", "frame.png", "--prompt", PROMPT, "--seed"]
    for text in ("-1", "9223372036854775808", "1.5", "1e20", "seven"):
        with pytest.raises(SystemExit) as stopped:
            script.main([*base, text])
        assert stopped.value.code == 2
        assert f"argument --seed: must be an integer in [0, 2**63), got '{text}'" in capsys.readouterr().err
    for text, seed in (("0", 0), ("9223372036854775807", 2**63 - 1)):
        assert script.parse_args([*base, text]).seed == seed


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height (one empty data chunk): what a decompression bomb looks like
    to a reader before it decodes anything."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_hostile_files_and_paths_are_errors_not_tracebacks(
    tiny_policy_checkpoint: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import torch

    script = _load_script()
    _write_image(tmp_path / "frame.png", seed=4)
    _png_header_only(tmp_path / "bomb.png", 15000, 15000)
    (tmp_path / "a_file").write_text("")
    base = ["--checkpoint_path", str(tiny_policy_checkpoint), "--prompt", PROMPT, "--state_vector", *map(str, STATE)]
    frame = ["--image1_paths", str(tmp_path / "frame.png")]
    cases = [
        (
            ["--image1_paths", str(tmp_path / "bomb.png")],
            f"error: --image1_paths: image {tmp_path / 'bomb.png'} is too large to decode safely",
        ),
        (
            [*frame, "--save_predictions", "--output_dir", str(tmp_path / "a_file")],
            f"error: --output_dir {tmp_path / 'a_file'}: {tmp_path / 'a_file'} is a file, not a folder",
        ),
        ([*frame, "--save_predictions", "--output_dir", str(tmp_path / "a_file" / "below")], "is a file, not a folder"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*frame, "--device", "cuda"], "error: device 'cuda': no CUDA device is visible"))
    for extra, message in cases:
        assert script.main([*base, *extra]) == 2, extra
        captured = capfd.readouterr()
        assert message in captured.err and captured.out == "", captured.err
        assert "Traceback" not in captured.err


def test_a_checkpoint_that_yields_nan_prints_an_error_not_nan(
    tiny_policy_checkpoint: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from conftest import edited_copy

    def poison(state: dict) -> None:
        state["action_decoder.bias"][0] = float("nan")

    folder = edited_copy(tiny_policy_checkpoint, tmp_path / "nan_checkpoint", poison)
    _write_image(tmp_path / "frame.png", seed=5)
    script = _load_script()
    argv = [
        "--checkpoint_path",
        str(folder),
        "--prompt",
        PROMPT,
        "--state_vector",
        *map(str, STATE),
        "--image1_paths",
        str(tmp_path / "frame.png"),
        "--seed",
        "0",
    ]
    assert script.main(argv) == 2
    captured = capfd.readouterr()
    assert "error: " in captured.err and "non-finite action values" in captured.err
    assert captured.out == ""  # no NaN (nor invalid JSON) on stdout
