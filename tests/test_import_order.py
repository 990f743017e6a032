"""tensorflow and bitsandbytes in one process: the guard turns an abort into a clear error."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)


def test_bitsandbytes_after_tensorflow_is_a_clear_error_not_an_abort():
    result = _run(
        "import tensorflow\n"
        "from pg_vla.utils.imports import ImportOrderError, import_bitsandbytes\n"
        "try:\n    import_bitsandbytes()\nexcept ImportOrderError as err:\n    print('refused:', err)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: tensorflow is already imported" in result.stdout


def test_bitsandbytes_first_then_tensorflow_works():
    result = _run(
        "from pg_vla.utils.imports import import_bitsandbytes\n"
        "bnb = import_bitsandbytes()\nimport tensorflow as tf\n"
        "print('ok', tf.constant(2).numpy() * 2, bnb.__name__)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok 4 bitsandbytes" in result.stdout
