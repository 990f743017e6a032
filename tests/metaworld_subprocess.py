"""Run Meta-World code in a fresh Python process (pytest's process imports tensorflow elsewhere, and a
process with tensorflow crashes when MuJoCo creates its EGL context)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load_script(path: Path) -> Any:
    """A script under scripts/ imported as a module (its functions, without running main)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def simulator_env() -> dict[str, str]:
    return {**os.environ, "MUJOCO_GL": "egl", "HF_HUB_OFFLINE": "1"}


def run_python(code: str, timeout: float = 300) -> Any:
    """Run `code` in a new interpreter; it must print one JSON document as its last stdout line."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=simulator_env(), cwd=REPO
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_script(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=simulator_env(), cwd=REPO
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc
