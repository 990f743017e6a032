"""Every shell command of README.md, run or checked on tiny data, so the README cannot drift from the code.

The commands are read from README.md itself: each line (with its `\\` continuations) of a ```bash block and
each inline `uv run ...` / `bash ...` span, comments dropped. Optional parts written `[--flag value]` are
kept (brackets removed) and of `a|b` alternatives the first is taken, so every documented flag is
exercised. Placeholders (DIR, CKPT, /path/to/..., IN.npz, frame.png, ...) become tiny fixtures; relative
paths (runs/..., eval/x, val/a.parquet) land in a temporary working folder that stands for the
repository root (its `config` is the repository's).

`COVERAGE` says how each command is checked, by its script:
- EXECUTED: run for real on tiny data, several commands per interpreter (tests/readme_runner.py) in two
  groups that run side by side: the tensorflow data chain (synthetic RLDS -> 224x224 copy -> Parquet ->
  Parquet loader, and -> LeRobot) and the model commands (pi0 self-tests, a tiny PaliGemma, inference, export,
  offline evaluation on Parquet and, in a third interpreter once the chain has written them, on the
  synthetic RLDS data), with a few speed flags the scripts have;
- COMPOSED: `scripts/run.py` (with or without torchrun) through Hydra's compose API with the README's
  overrides, resolved, then into the typed config the `_target_` builds (`TrainConfig` with the data
  source's and the model's configs, or `EvalConfig`); `--cfg job` (print the config) is composed only;
- PARSED: the script's own `parse_args(argv)` (or, where it has none, its argparse parser) on the
  command's arguments, for commands that need a GPU, a server, a simulator or minutes; the note names
  the test that runs it for real;
- SYNTAX: `bash -n` of the shell script;
- EXTERNAL: not run (network, installs, or the test suite itself), with the reason.
A README command whose script the table does not know fails the test, and so does a table entry no
README command uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNER = Path(__file__).resolve().parent / "readme_runner.py"
RUN_TIMEOUT_S = 400  # per group of executed commands
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "OMP_NUM_THREADS": "1",
}

EXECUTED, COMPOSED, PARSED, SYNTAX, EXTERNAL = "executed", "composed", "parsed", "syntax", "external"


# ---- the README's commands ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    lines: tuple[int, ...]  # README line numbers (the same command may appear twice)
    argv: tuple[str, ...]  # optional parts kept, first alternatives taken, placeholders still in

    @property
    def script(self) -> str:
        return script_of(self.argv)

    @property
    def script_args(self) -> list[str]:
        """The arguments after the script (or after `git clone`, `uv pip install`)."""
        words = list(self.argv)
        return words[words.index(self.script.split()[-1]) + 1 :]

    @property
    def name(self) -> str:
        return f"L{self.lines[0]}_{Path(self.script.split()[-1]).stem}"


_OPTIONAL = re.compile(r"(?<!\S)\[([^\[\]'\"]*)\](?!\S)")  # `[--flag value]` as whole words, outside quotes
_INLINE = re.compile(r"`((?:uv run|bash) [^`]+)`")


def split_command(text: str) -> tuple[str, ...]:
    """Shell words of one command: `[optional parts]` kept without brackets, `a|b` -> `a`, comments dropped."""
    words = shlex.split(_OPTIONAL.sub(r"\1", text), comments=True)
    return tuple(w.split("|")[0] for w in words)


def extract_commands(markdown: str) -> list[Command]:
    found: dict[tuple[str, ...], list[int]] = {}
    fence, pending, start = None, "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence == "bash":
            if not pending:
                start = number
            body = f"{pending} {line}" if pending else line
            if body.rstrip().endswith("\\"):
                pending = body.rstrip()[:-1]
                continue
            pending = ""
            words = split_command(body)
            if words:
                found.setdefault(words, []).append(start)
        elif fence is None:
            for match in _INLINE.finditer(line):
                found.setdefault(split_command(match.group(1)), []).append(number)
    return [Command(tuple(lines), argv) for argv, lines in found.items()]


def script_of(argv: tuple[str, ...] | list[str]) -> str:
    words = list(argv)
    if words[:1] == ["srun"]:  # SLURM's launcher and its options, then the command it starts on every node
        words = words[1:]
        while words and words[0].startswith("-"):
            words = words[1:]
        return script_of(words)
    if words[:2] == ["uv", "run"]:
        words = words[2:]
        if words and words[0] == "torchrun":  # its own --options, then the script
            words = [w for w in words[1:] if not w.startswith("--")]  # --nproc_per_node=8, --rdzv_id=..., ...
        return words[0] if words else "uv run"
    if words[:1] == ["bash"]:
        return words[1]
    if words[:2] == ["git", "clone"]:
        return "git clone"
    if words[:3] == ["uv", "pip", "install"]:
        return "uv pip install"
    return words[0]


COMMANDS = extract_commands(README.read_text())


# ---- how each command is checked -------------------------------------------------------------------------
@dataclass(frozen=True)
class How:
    kind: str
    note: str  # what is checked, the test that runs it for real, or why it is not run
    extra: tuple[str, ...] = ()  # speed flags the script has, added to the README's arguments
    group: str = "model"  # EXECUTED: the interpreter it runs in ("data": tensorflow chain)
    check: Callable[[Command, dict[str, Any], "Work"], None] | None = field(default=None, compare=False)


def _check_synthetic(cmd, result, work):
    for name, version in (("bridge_dataset", "1.0.0"), ("fractal20220817_data", "0.1.0")):
        assert (work.rlds / name / version / "dataset_info.json").is_file()


def _check_modified(cmd, result, work):
    assert result["stdout"].strip().splitlines()[-1] == str(work.rlds_224 / "bridge_dataset" / "1.0.0")


def _check_loader(cmd, result, work):
    assert "batch:" in result["stdout"] and "frames/s" in result["stdout"], result["stdout"]


def _check_parquet(cmd, result, work):
    files = sorted(work.bridge_parquet.glob("*.parquet"))
    assert files and [str(f) for f in files] == result["stdout"].strip().splitlines()[-len(files) :]


def _check_lerobot(cmd, result, work):
    info = json.loads((work.bridge_lerobot / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2
    assert result["stdout"].strip().splitlines()[-1] == str(work.bridge_lerobot)
    assert list((work.bridge_lerobot / "videos").rglob("*.mp4"))


def _check_count_params(cmd, result, work):
    printed = json.loads(result["stdout"].strip().splitlines()[-1])
    if "--action_head" not in cmd.argv:  # the README shows this output
        shown = re.search(r"```json\n(.*?)\n```", README.read_text(), re.S)
        assert shown is not None and printed == json.loads(shown.group(1))


def _check_pizero(cmd, result, work):
    out = result["stdout"].strip().splitlines()
    if "--count_params" in cmd.argv:
        _check_count_params(cmd, result, work)
    elif "--inputs" in cmd.argv:
        with np.load(work.cwd / "OUT.npz") as npz:
            assert npz["velocity"].shape == npz["sampled"].shape == work.inputs_action_shape
            assert np.isfinite(npz["velocity"]).all() and np.isfinite(npz["sampled"]).all()
    elif "--text_only" in cmd.argv:
        assert out, "no generated text printed"
    else:
        assert "sampled action chunk of shape" in out[-1], out


def _check_tiny_checkpoint(cmd, result, work):
    assert (work.tiny_paligemma / "config.json").is_file() and list(work.tiny_paligemma.glob("*.safetensors"))


def _check_joint_model(cmd, result, work):
    assert "block attention mask" in result["stdout"] and "action output" in result["stdout"]


def _check_infer(cmd, result, work):
    printed = json.loads(result["stdout"])
    assert np.array(printed["actions"]).shape == (work.horizon, 7) and printed["seed"] == 0
    saved = np.load(work.cwd / "runs" / "infer" / "actions.npy")
    np.testing.assert_array_equal(saved, np.array(printed["actions"], dtype=np.float32))


def _check_export(cmd, result, work):
    config = json.loads((work.cwd / "pi0_bridge_export" / "config.json").read_text())
    assert config["model_type"] == "pi0" and (work.cwd / "pi0_bridge_export" / "model.safetensors").is_file()


def _check_eval_offline(cmd, result, work):
    out = work.cwd / "eval" / ("x_rlds" if "--split" in cmd.argv else "x")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] > 0 and np.isfinite(metrics["mse"])
    assert (out / "trajectories.png").is_file()
    assert (out / "predictions.csv").is_file() == ("--save_predictions" in cmd.argv)


_COMPOSE = "Hydra compose + resolve, then TrainConfig.from_dict, the data source's config and PiZeroConfig"
_COMPOSE_EVAL = "Hydra compose + resolve, then EvalConfig.from_dict (suite and task names checked)"
COVERAGE: dict[str, How] = {
    # ---- run on tiny data
    "scripts/data/make_synthetic_rlds.py": How(
        EXECUTED,
        "writes bridge + fractal (train/val) into the data folder; + --steps 6 10",
        ("--steps", "6", "10"),
        group="data",
        check=_check_synthetic,
    ),
    "scripts/data/modify_rlds_dataset.py": How(
        EXECUTED,
        "224x224 copy of the synthetic bridge dataset; real-data check: tests/test_modify_rlds.py",
        ("--num_workers", "2"),
        group="data",
        check=_check_modified,
    ),
    "scripts/data/rlds_to_parquet.py": How(
        EXECUTED, "converts 2 episodes (--max_episodes N=2) of the 224x224 copy", group="data", check=_check_parquet
    ),
    "scripts/data/rlds_to_lerobot.py": How(
        EXECUTED,
        "converts 2 episodes (--max_episodes N=2) of the 224x224 copy to a v3.0 folder (AV1 video); "
        "loaded against the RLDS batches in tests/test_lerobot_source.py",
        group="data",
        check=_check_lerobot,
    ),
    "src/pg_vla/data/parquet/loader.py": How(
        EXECUTED,
        "statistics + 2 batches of the converted files; + --num_batches 2 --num_workers 0 --shuffle_buffer 64",
        ("--num_batches", "2", "--num_workers", "0", "--shuffle_buffer", "64"),
        group="data",
        check=_check_loader,
    ),
    "scripts/eval_offline.py": How(
        EXECUTED,
        "on the tiny checkpoint: Parquet files (--max_batches N=1, + --num_workers 0) and the synthetic "
        "RLDS val split (+ --max_batches 1, output eval/x_rlds); details: tests/test_eval_offline.py",
        ("--max_batches", "1", "--num_workers", "0"),
        check=_check_eval_offline,
    ),
    "src/pg_vla/model/paligemma/tiny_checkpoint.py": How(
        EXECUTED, "writes the small tiny PaliGemma", check=_check_tiny_checkpoint
    ),
    "src/pg_vla/model/vla/joint_model.py": How(EXECUTED, "prints the block mask", check=_check_joint_model),
    "src/pg_vla/model/vla/pizero.py": How(
        EXECUTED,
        "small preset sampling (both heads); pi0 parameter counts on the meta device, equal to the "
        "README's JSON; text generation and --inputs/--output on the tiny PaliGemma (DIR)",
        check=_check_pizero,
    ),
    "scripts/infer.py": How(
        EXECUTED,
        "on the tiny two-camera checkpoint (frame.png, wrist.png); details: tests/test_infer.py",
        check=_check_infer,
    ),
    "scripts/export_checkpoint.py": How(
        EXECUTED,
        "exports the tiny checkpoint's run; transformers loads it in tests/test_pi0_export.py",
        check=_check_export,
    ),
    # ---- composed
    "scripts/run.py": How(
        COMPOSED,
        f"train configs: {_COMPOSE}; config/eval: {_COMPOSE_EVAL}; --cfg job: "
        "compose + resolve only; training runs: tests/test_training_run.py (quickstart), "
        "tests/test_pi0_finetune.py (pi0_bridge), tests/test_metaworld_e2e.py (metaworld "
        "training and evaluation)",
    ),
    # ---- parsed
    "scripts/serve_policy.py": How(
        PARSED, "parse_args; served for real in tests/test_serving.py, tests/test_serving_limits.py"
    ),
    "scripts/data/make_metaworld_demos.py": How(
        PARSED, "its argparse parser (minutes of rendering); run for real in tests/test_metaworld_e2e.py"
    ),
    "src/pg_vla/data/dataloader.py": How(
        PARSED,
        "its argparse parser (~30 s of CPU: statistics and the tf.data "
        "worker are two spawned tensorflow processes); run for real in "
        "tests/test_rlds_pipeline.py::test_cli_prints_statistics_path_and_"
        "throughput",
    ),
    "scripts/bench/dataloader.py": How(PARSED, "its argparse parser (a benchmark: minutes)"),
    "scripts/bench/inference.py": How(
        PARSED,
        "parse_args of pg_vla.bench.cli, through the script's main() (a benchmark; pi0 and --device cuda "
        "need minutes or a GPU); smoke test in tests/test_bench_inference.py",
    ),
    "scripts/bench/serving.py": How(PARSED, "parse_args (a benchmark: a server and many requests)"),
    "scripts/bench/vision_probe.py": How(
        PARSED, "parse_args (a benchmark: minutes of rendering and training); tiny run in tests/test_vision_probe.py"
    ),
    "scripts/bench/scene_state_readout.py": How(
        PARSED, "parse_args (renders Meta-World scenes); run on a trained checkpoint in tests/test_scene_state.py"
    ),
    "scripts/bench/metaworld_view_ambiguity.py": How(
        PARSED, "parse_args (builds a Meta-World scene); run for real in tests/test_metaworld_views.py"
    ),
    # ---- shell
    "scripts/bench/metaworld_benchmark.sh": How(
        SYNTAX, "bash -n (an hour of CPU); its steps are the metaworld commands checked above"
    ),
    "scripts/setup_simpler.sh": How(
        SYNTAX, "bash -n (creates the simulator venv, apt's Mesa on CPU-only machines; minutes and the network)"
    ),
    # ---- not run
    "pytest": How(EXTERNAL, "the test suite itself"),
    "git clone": How(EXTERNAL, "needs the network (SimplerEnv's repository)"),
    "~/.cache/pg_vla/simpler-venv/bin/python": How(
        EXTERNAL,
        "the simulator venv's python (scripts/setup_simpler.sh) running scripts/simpler_client.py; real "
        "episodes through a server in tests/test_simpler_integration.py (marker simpler)",
    ),
}


# ---- placeholders ------------------------------------------------------------------------------------------
@dataclass
class Work:
    """Temporary folders and files the commands' placeholders stand for."""

    root: Path
    paligemma: Path  # the tiny PaliGemma DIR / /path/to/paligemma-3b-pt-224 stand for
    horizon: int = 4

    def __post_init__(self) -> None:
        self.cwd = self.root / "cwd"  # stands for the repository root: runs/..., eval/x, val/ land here
        self.rlds = self.root / "rlds"
        self.rlds_224 = self.root / "rlds_224"
        self.bridge_parquet = self.root / "bridge_parquet"
        self.bridge_lerobot = self.root / "bridge_lerobot"
        self.tiny_paligemma = self.root / "tiny_paligemma"
        self.lab = self.root / "lab"
        self.pi0_base = self.root / "pi0_base"
        self.metaworld_data = self.root / "metaworld_data"
        self.run_dir = self.cwd / "runs" / "x"  # the tiny checkpoint's run (log_dir)
        for folder in (self.cwd, self.rlds, self.lab / "train", self.lab / "val", self.pi0_base, self.metaworld_data):
            folder.mkdir(parents=True, exist_ok=True)
        if not (self.cwd / "config").exists():
            (self.cwd / "config").symlink_to(ROOT / "config")
        self.inputs_action_shape: tuple[int, ...] = ()

    @property
    def values(self) -> dict[str, str]:
        return {
            "/path/to/paligemma-3b-pt-224": str(self.paligemma),
            "DIR": str(self.paligemma),
            "/path/to/rlds": str(self.rlds),
            "/path/to/pi0_base": str(self.pi0_base),
            "/tmp/tiny_paligemma": str(self.tiny_paligemma),
            "/tmp/rlds": str(self.rlds),
            "RAW_DIR": str(self.rlds),
            "/data/rlds": str(self.rlds),
            "DATA_DIR": str(self.rlds_224),
            "/data/bridge_parquet": str(self.bridge_parquet),
            "/data/bridge_lerobot": str(self.bridge_lerobot),
            "/tmp/bench/rlds": str(self.root / "bench_rlds"),
            "/data/lab/train": str(self.lab / "train"),
            "/data/lab/val": str(self.lab / "val"),
            "DATA": str(self.metaworld_data),
            "OUT": str(self.root / "out"),
            "CKPT": str(self.run_dir / "checkpoints" / "step_010000"),
            "PATH": "frame.png",
            "KEY": "readme-key",
        }


FLAG_VALUES = {  # a placeholder whose meaning depends on its flag
    ("--max_episodes", "N"): "2",
    ("--max_batches", "N"): "1",
    ("--dataset_name", "N"): "bridge_dataset",
    ("--num_threads", "N"): "1",
}
_BOUNDARY = r"(?<![^=\[,]){}(?![^\],])"  # a whole word, a `key=` value or a Hydra list item


def substitute(args: list[str], work: Work) -> list[str]:
    import torch

    values = sorted(work.values.items(), key=lambda kv: -len(kv[0]))
    out = []
    for i, word in enumerate(args):
        flag = args[i - 1] if i else ""
        if (flag, word) in FLAG_VALUES:
            word = FLAG_VALUES[flag, word]
        elif flag == "--device" and word.startswith("cuda") and not torch.cuda.is_available():
            word = "cpu"
        else:
            for placeholder, value in values:
                word = re.sub(_BOUNDARY.format(re.escape(placeholder)), value.replace("\\", r"\\"), word)
        out.append(word)
    return out


def with_extra(args: list[str], extra: tuple[str, ...]) -> list[str]:
    """`extra` flags (with their values) that `args` does not already give."""
    out, i = list(args), 0
    while i < len(extra):
        j = i + 1
        while j < len(extra) and not extra[j].startswith("--"):
            j += 1
        if extra[i] not in args:
            out += extra[i:j]
        i = j
    return out


def commands_of(kind: str) -> list[Command]:
    return [c for c in COMMANDS if c.script in COVERAGE and COVERAGE[c.script].kind == kind]


def _ids(commands: list[Command]) -> list[str]:
    return [c.name for c in commands]


# ---- the table is complete -------------------------------------------------------------------------------
def test_every_readme_command_is_covered_by_the_table() -> None:
    assert len(COMMANDS) >= 30, "the README's commands were not found: is the extraction broken?"
    unknown = sorted({f"{c.script} (README line {c.lines[0]})" for c in COMMANDS if c.script not in COVERAGE})
    assert not unknown, f"README commands this test does not know; add them to COVERAGE: {unknown}"
    unused = sorted(set(COVERAGE) - {c.script for c in COMMANDS})
    assert not unused, f"COVERAGE entries no README command uses (remove them): {unused}"
    for command in COMMANDS:
        path = command.script
        if COVERAGE[path].kind != EXTERNAL:
            assert (ROOT / path).is_file(), f"README line {command.lines[0]}: {path} does not exist"
        for word in command.argv:  # repository files the commands name
            if re.fullmatch(r"(config|scripts|src)/\S+\.(py|yaml|json|sh)", word):
                assert (ROOT / word).is_file(), f"README line {command.lines[0]}: {word} does not exist"


def test_extraction_keeps_optional_parts_and_takes_first_alternatives() -> None:
    markdown = (
        '```bash\n# a comment\nuv run a.py --x 1 \\\n    [--y 2] [--z a|b] "k=[1, 2]"  # note\n```\n'
        "text `uv run b.py [--flag]` and `uv run`\n```python\nuv run c.py\n```\n"
    )
    commands = extract_commands(markdown)
    assert [(c.lines, c.argv) for c in commands] == [
        ((3,), ("uv", "run", "a.py", "--x", "1", "--y", "2", "--z", "a", "k=[1, 2]")),
        ((6,), ("uv", "run", "b.py", "--flag")),
    ]
    assert script_of(("uv", "run", "torchrun", "--nproc_per_node=8", "scripts/run.py", "x=1")) == "scripts/run.py"


# ---- EXECUTED ----------------------------------------------------------------------------------------------
def _jpeg(value: int, size: int = 16) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_parquet(path: Path, episodes: int, seed: int) -> None:
    """A Parquet file of short labeled episodes with 7-D state and actions inside the bridge bounds."""
    from pg_vla.data.parquet import ParquetEpisodeWriter

    stats = json.loads((ROOT / "config" / "bridge_statistics.json").read_text())
    rng = np.random.default_rng(seed)
    folder = path.parent / f".{path.stem}"
    with ParquetEpisodeWriter(folder, rows_per_group=8) as writer:
        for e in range(episodes):
            length = 5 + e
            action = rng.uniform(stats["action"]["p01"], stats["action"]["p99"], size=(length, 7))
            action[:, -1] = rng.integers(0, 2, length)
            state = rng.uniform(stats["proprio"]["p01"], stats["proprio"]["p99"], size=(length, 7))
            writer.add_episode(
                [_jpeg(10 * e + t) for t in range(length)],
                state,
                action,
                f"put block {e} away",
                episode_id=f"{path.stem}{e}",
                image_2=[_jpeg(200 - t) for t in range(length)],
            )
    (written,) = folder.glob("*.parquet")
    written.rename(path)
    folder.rmdir()


def _two_camera_checkpoint(log_dir: Path, paligemma: Path, horizon: int) -> Path:
    """A training checkpoint of a random tiny pi0 for bridge with cameras primary and wrist, at step 10000."""
    import torch

    from pg_vla.model.paligemma.processing import VLAProcessor
    from pg_vla.model.vla.pizero import PiZero
    from pg_vla.training.checkpoint import save_training_checkpoint

    torch.manual_seed(0)
    overrides = {
        "proprio_dim": 7,
        "action_dim": 7,
        "horizon_steps": horizon,
        "cond_steps": 1,
        "num_cameras": 2,
        "max_text_tokens": 12,
        "action_expert": {"hidden_size": 32, "intermediate_size": 64},
    }
    model = PiZero.from_paligemma(paligemma, **overrides)
    processor = VLAProcessor.from_pretrained(
        paligemma, max_text_tokens=12, image_size=model.config.vision.image_size, max_cameras=2
    )
    run_config = {
        "data": {"mix": "bridge", "camera_roles": ["primary", "wrist"], "normalization": "bounds"},
        "model": overrides,
        "seed": 0,
    }
    statistics = {"bridge_dataset": ROOT / "config" / "bridge_statistics.json"}
    return save_training_checkpoint(
        log_dir / "checkpoints", 10_000, model, config=run_config, statistics=statistics, tokenizer=processor
    )


def _write_inputs(path: Path, paligemma: Path, horizon: int) -> tuple[int, ...]:
    """IN.npz of the README's pizero.py --inputs command, sized for the PaliGemma folder's pi0."""
    from pg_vla.model.vla.config import PiZeroConfig

    cfg = PiZeroConfig.from_paligemma(paligemma)
    rng = np.random.default_rng(0)
    b, length, size = 2, 6, cfg.vision.image_size
    text_mask = np.ones((b, length), bool)
    text_mask[1, 4:] = False
    arrays = {
        "images": rng.uniform(-1, 1, (b, 1, 3, size, size)).astype(np.float32),
        "text_ids": rng.integers(3, 100, (b, length)).astype(np.int64),
        "text_mask": text_mask,
        "state": rng.uniform(-1, 1, (b, cfg.proprio_dim)).astype(np.float32),
        "noise": rng.standard_normal((b, horizon, cfg.action_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (b, horizon, cfg.action_dim)).astype(np.float32),
        "time": np.array([0.3, 0.9], np.float32),
    }
    np.savez(path, **arrays)
    return (b, horizon, cfg.action_dim)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint_dir: Path) -> Work:
    from PIL import Image

    w = Work(tmp_path_factory.mktemp("readme"), tiny_checkpoint_dir)
    _two_camera_checkpoint(w.run_dir, w.paligemma, w.horizon)
    for name in ("bridge", "pi0_bridge", "fractal", "metaworld"):  # runs the README points at
        (w.cwd / "runs" / name).symlink_to(w.run_dir)
    rng = np.random.default_rng(0)
    for name, size in (("frame.png", (60, 80)), ("wrist.png", (40, 40))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(w.cwd / name)
    w.inputs_action_shape = _write_inputs(w.cwd / "IN.npz", w.paligemma, w.horizon)
    (w.cwd / "val").mkdir()
    _write_parquet(w.cwd / "val" / "a.parquet", 2, seed=1)
    _write_parquet(w.cwd / "val" / "b.parquet", 1, seed=2)
    return w


def _executed_argv(command: Command, work: Work) -> list[str]:
    how = COVERAGE[command.script]
    args = with_extra(substitute(command.script_args, work), how.extra)
    if command.script == "scripts/eval_offline.py" and "--split" in args:  # the RLDS run next to the Parquet one
        args[args.index("--output_dir") + 1] = "eval/x_rlds"
    return [str(ROOT / command.script), *args]


def _synthetic_rlds_writer() -> str:
    return next(c.name for c in commands_of(EXECUTED) if c.script == "scripts/data/make_synthetic_rlds.py")


@pytest.fixture(scope="module")
def executed(work: Work) -> dict[str, dict[str, Any]]:
    """Runs every EXECUTED command, in README order within its group, the groups side by side;
    -> command name -> {"rc", "seconds", "stdout", "stderr"} (rc None: not reached).

    A command of another group that reads the synthetic RLDS data runs in an interpreter of its own once
    the data group has written them: tensorflow, imported there, stays out of it as in a process of its own
    (one interpreter holding tensorflow and then the evaluation's imports aborts on duplicate LLVM options)."""
    groups: dict[str, list[dict]] = {"data": [], "model": [], "reads_rlds": []}
    for command in commands_of(EXECUTED):
        argv, group = _executed_argv(command, work), COVERAGE[command.script].group
        entry = {"name": command.name, "argv": argv}
        if group != "data" and str(work.rlds) in argv:
            group = "reads_rlds"
            entry["after"] = [str(work.root / "data_logs" / "report.json"), _synthetic_rlds_writer()]
        groups[group].append(entry)
    env = {**os.environ, **ENV, "VLA_CACHE_DIR": str(work.root / "cache")}
    for name in ("TRANSFORMERS_CACHE", "VLA_DATA_DIR", "VLA_LOG_DIR"):
        env.pop(name, None)
    procs = {}
    for group, commands in groups.items():
        spec = work.root / f"{group}_spec.json"
        spec.write_text(
            json.dumps(
                {"commands": commands, "log_dir": str(work.root / f"{group}_logs"), "keep_going": group != "data"}
            )
        )  # the data chain stops at a broken link
        procs[group] = subprocess.Popen(
            [sys.executable, str(RUNNER), str(spec)],
            cwd=work.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outputs = {}
    for group, proc in procs.items():
        try:
            outputs[group] = proc.communicate(timeout=RUN_TIMEOUT_S)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            outputs[group] = proc.communicate()[0] + f"\n(killed after {RUN_TIMEOUT_S} s)"
    results: dict[str, dict[str, Any]] = {}
    for group, commands in groups.items():
        logs = work.root / f"{group}_logs"
        report = json.loads((logs / "report.json").read_text()) if (logs / "report.json").is_file() else []
        ran = {entry["name"]: entry for entry in report}
        for command in commands:
            entry = ran.get(command["name"], {"rc": None, "seconds": None})

            def read(suffix: str, logs: Path = logs, name: str = command["name"]) -> str:
                path = logs / f"{name}{suffix}"
                return path.read_text(errors="replace") if path.is_file() else ""

            results[command["name"]] = {
                **entry,
                "stdout": read(".out"),
                "stderr": read(".err"),
                "runner": outputs[group][-3000:],
                "group": group,
            }
    return results


@pytest.mark.slow
@pytest.mark.parametrize("command", commands_of(EXECUTED), ids=_ids(commands_of(EXECUTED)))
def test_executed(command: Command, executed: dict[str, dict[str, Any]], work: Work) -> None:
    result = executed[command.name]
    shown = shlex.join(_executed_argv(command, work))
    assert result["rc"] is not None, (
        f"not reached in the {result['group']} group (an earlier command failed or "
        f"the group timed out): {shown}\n{result['runner']}"
    )
    assert result["rc"] == 0, f"{shown}\nexit status {result['rc']}\n{result['stderr'][-4000:]}"
    check = COVERAGE[command.script].check
    if check is not None:
        check(command, result, work)


# ---- COMPOSED ----------------------------------------------------------------------------------------------
TARGET_SECTIONS = {"pg_vla.training.quickstart.run": "quickstart", "pg_vla.eval.metaworld.training.run": "metaworld"}
EVAL_TARGETS = ("pg_vla.eval.agent.evaluate",)


def hydra_arguments(args: list[str]) -> tuple[str, str, list[str], bool]:
    """(config dir, config name, overrides, print-only) of `scripts/run.py` arguments."""
    config_path, config_name, overrides, print_only = "../config/train", "quickstart", [], False
    words = iter(args)
    for word in words:
        if word.startswith("--config-path"):
            config_path = word.split("=", 1)[1] if "=" in word else next(words)
        elif word.startswith("--config-name"):
            config_name = word.split("=", 1)[1] if "=" in word else next(words)
        elif word == "--cfg":
            assert next(words) == "job", "only --cfg job is documented"
            print_only = True
        else:
            assert not word.startswith("-"), f"a Hydra flag this test does not know: {word}"
            overrides.append(word)
    return str((ROOT / "scripts" / config_path).resolve()), config_name, overrides, print_only


def _typed_train_config(data: dict[str, Any], tmp: Path) -> None:
    from pg_vla.data.sources import FIXED, LEROBOT_EXTRA, PARQUET_EXTRA, source_of, source_options
    from pg_vla.model.vla.config import PiZeroConfig
    from pg_vla.training.config import TrainConfig

    section = TARGET_SECTIONS.get(data["_target_"])
    if section:  # the run prepares data and model from it, then trains with the rest
        data.pop(section)
    for key in ("pretrained_model_path", "log_dir"):
        if data.get(key) is None:  # generated by the run, or from an environment variable
            data[key] = str(tmp)
    if source_of(data["data"]) == "rlds" and data["data"].get("data_path") is None:
        data["data"]["data_path"] = str(tmp)
    cfg = TrainConfig.from_dict(data)
    fixed = {name: 1 for name in FIXED if name != "train"}
    options = source_options(cfg.data)
    if source_of(cfg.data) == "parquet":
        from pg_vla.data.parquet import ParquetConfig

        ParquetConfig(**{k: v for k, v in options.items() if k not in PARQUET_EXTRA}, **fixed)
    elif source_of(cfg.data) == "lerobot":
        from pg_vla.data.lerobot import LeRobotConfig

        LeRobotConfig(**{k: v for k, v in options.items() if k not in LEROBOT_EXTRA}, **fixed)
    else:
        from pg_vla.data.rlds.config import RLDSConfig

        RLDSConfig(**options, **fixed)
    PiZeroConfig().with_overrides(**cfg.model)


def _typed_eval_config(data: dict[str, Any]) -> None:
    from pg_vla.eval.agent import EvalConfig
    from pg_vla.eval.suite import SUITES

    cfg = EvalConfig.from_dict(data)
    assert cfg.env["name"] in SUITES, cfg.env
    if cfg.env["name"] == "simpler":
        from pg_vla.eval.envs.simpler import SIMPLER_TASKS

        assert set(cfg.env["tasks"]) <= set(SIMPLER_TASKS), cfg.env["tasks"]


@pytest.mark.parametrize("command", commands_of(COMPOSED), ids=_ids(commands_of(COMPOSED)))
def test_composed(command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import get_method
    from omegaconf import OmegaConf

    work = Work(tmp_path, tmp_path / "paligemma")
    work.paligemma.mkdir()
    (work.paligemma / "tokenizer.json").write_text("{}")  # tokenizer_path is checked to hold a tokenizer
    for name in ("TRANSFORMERS_CACHE", "VLA_DATA_DIR", "VLA_LOG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(work.cwd)
    config_dir, config_name, overrides, print_only = hydra_arguments(substitute(command.script_args, work))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name=config_name, overrides=overrides)
    data = OmegaConf.to_container(cfg, resolve=True)
    assert callable(get_method(data["_target_"]))
    if print_only:
        return
    if data["_target_"] in EVAL_TARGETS:
        _typed_eval_config(data)
    else:
        (tmp_path / "generated").mkdir()
        _typed_train_config(data, tmp_path / "generated")


# ---- PARSED -------------------------------------------------------------------------------------------------
class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"readme_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The script's `parse_args(args)`; without one, its `main()` (on `sys.argv`) stopped right after argparse
    parsed."""
    module = _load_script(path)
    if hasattr(module, "parse_args"):
        return module.parse_args(args)
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    with pytest.raises(_Parsed) as parsed:
        module.main()
    return parsed.value.namespace


@pytest.mark.parametrize("command", commands_of(PARSED), ids=_ids(commands_of(PARSED)))
def test_parsed(
    command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = Work(tmp_path, tmp_path / "paligemma")
    monkeypatch.chdir(work.cwd)
    args = substitute(command.script_args, work)
    try:
        namespace = parse(ROOT / command.script, args, monkeypatch)
    except SystemExit as err:
        pytest.fail(
            f"{command.script} refuses the README's arguments {args} (exit {err.code}):\n{capsys.readouterr().err}"
        )
    flags = {word.lstrip("-").split("=")[0].replace("-", "_") for word in args if word.startswith("--")}
    assert flags <= set(vars(namespace)), flags - set(vars(namespace))


# ---- SYNTAX and EXTERNAL ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", commands_of(SYNTAX), ids=_ids(commands_of(SYNTAX)))
def test_shell_script_syntax(command: Command) -> None:
    done = subprocess.run(["bash", "-n", str(ROOT / command.script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", commands_of(EXTERNAL), ids=_ids(commands_of(EXTERNAL)))
def test_external(command: Command) -> None:
    pytest.skip(f"not run: {COVERAGE[command.script].note} ({shlex.join(command.argv)})")


# ---- the README's Python blocks ----------------------------------------------------------------------------
PYTHON_BLOCKS = {  # first import of the block -> how it is checked
    "pg_vla.data.parquet": "executed here on a Parquet file with the example's column names",
    "openpi_client.websocket_client_policy": "the same client calls against the server: tests/test_serving.py",
}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_python_blocks_are_covered() -> None:
    blocks = python_blocks()
    assert blocks
    for block in blocks:
        first = re.search(r"^from (\S+) import", block, re.M)
        assert first is not None and first.group(1) in PYTHON_BLOCKS, f"a README Python block to cover:\n{block}"


def test_parquet_python_example(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    (block,) = [b for b in python_blocks() if "make_parquet_loader" in b]
    lab = tmp_path / "lab"
    lab.mkdir()
    _write_parquet(lab / "episodes.parquet", 2, seed=3)
    table = pq.read_table(lab / "episodes.parquet")  # the example's column names
    pq.write_table(
        table.rename_columns([{"state": "observation.state", "prompt": "task"}.get(n, n) for n in table.column_names]),
        lab / "episodes.parquet",
    )
    namespace: dict[str, Any] = {"rank": 0, "world_size": 1}
    exec(compile(block.replace("/data/lab", str(lab)), "README.md", "exec"), namespace)
    loader, statistics = namespace["loader"], namespace["statistics"]
    assert list(statistics) == ["parquet"] and statistics["parquet"].action.dim == 7
    batch = next(iter(loader.dataset))  # in this process (the loader would spawn its worker)
    assert tuple(batch["images"].shape[:2]) == (16, 2) and batch["actions"].shape[1:] == (4, 7)
