"""Quiet consoles: the one place that silences library noise in every entry point.

Each script under scripts/ starts with

    from pg_vla.utils import quiet
    quiet.configure()

before it imports anything heavy. By default that

- sets `TF_CPP_MIN_LOG_LEVEL=2` and `GRPC_VERBOSITY=ERROR` in the environment, read by tensorflow's
  C++ runtime (absl logging: oneDNN and CPU-feature notices, buffer-size messages) when it is
  imported, here or in any process started from here (environment variables are inherited);
- in a process started with multiprocessing's spawn method (data readers, the statistics pass, the
  renderers: they re-run the script's top level, so this runs there too) hides the GPUs from
  tensorflow by setting `CUDA_VISIBLE_DEVICES=""` before tensorflow loads: data processes never
  compute on a GPU, on a CPU machine tensorflow would log `failed call to cuInit`, and on a GPU
  machine it would reserve GPU memory the training process needs;
- lowers the `tensorflow` and `absl` Python loggers to errors (tensorflow_datasets' "CounterV2 is
  deprecated" notice is logged there) and ignores the deprecation warnings in `KNOWN_WARNINGS`;
- in those spawned processes, and in a script that imports tensorflow itself
  (`configure(native_logs=True)`), filters the process's stderr (file descriptor 2, so C++ writes
  are caught too): tensorflow's absl messages logged before `absl::InitializeLog()` are written to
  stderr whatever TF_CPP_MIN_LOG_LEVEL says (`cudart_stub.cc] Could not find cuda drivers`, the
  `All log messages before absl::InitializeLog()` banner), so lines in absl's format at INFO and
  WARNING severity are dropped, and of the ERROR lines only the known `failed call to cuInit`
  (tensorflow probing for a GPU on a machine without a driver). Everything else, Python tracebacks
  included, passes through unchanged.

`--verbose` on the command line (removed from `sys.argv` before the script parses it) or
`PG_VLA_VERBOSE=1` in the environment leaves everything as the libraries set it; `--verbose` also
exports `PG_VLA_VERBOSE=1`, so helper processes are verbose too. Variables the user has set
(e.g. `TF_CPP_MIN_LOG_LEVEL=0`, `CUDA_VISIBLE_DEVICES`) are never overwritten.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import re
import sys
import threading
import warnings

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "PG_VLA_VERBOSE"
ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}
# (message regex, category, module regex) of warnings that say nothing a user can act on.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r".*is deprecated", DeprecationWarning, r"(tensorflow|tensorflow_datasets|tf_keras|absl|google\.protobuf)(\.|$)"),
    (r".*", DeprecationWarning, r"(jax|flatbuffers|pkg_resources|wandb|sapien|gymnasium)(\.|$)"),
    (r"pkg_resources is deprecated", UserWarning, r""),
    (r".*__array__ implementation doesn't accept a copy keyword", DeprecationWarning, r""),
)

# Lines in absl's format (severity letter, MMDD, time (seconds since 1970 before absl is initialized),
# thread id, file:line]) and tensorflow's banners.
DROPPED_LINES = (
    re.compile(rb"^[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] "),  # absl INFO / WARNING
    re.compile(rb"^E\d{4} [^\]]+cuda_platform\.cc:\d+\] failed call to cuInit"),  # no GPU driver here
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
    re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags"),
)


def is_verbose(argv: list[str] | None = None) -> bool:
    """True when `--verbose` is in `argv` (default `sys.argv`) or PG_VLA_VERBOSE is set to a true value."""
    argv = sys.argv if argv is None else argv
    return VERBOSE_FLAG in argv[1:] or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def configure(argv: list[str] | None = None, native_logs: bool = False) -> bool:
    """Apply the quiet defaults (see the module docstring) unless verbose; returns whether verbose.

    Removes `--verbose` from `argv` (default `sys.argv`, in place) so that argparse and Hydra never see it.
    """
    argv = sys.argv if argv is None else argv
    verbose = is_verbose(argv)
    while VERBOSE_FLAG in argv[1:]:
        argv.remove(VERBOSE_FLAG)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return True
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    child = is_child_process()
    if child and "tensorflow" not in sys.modules:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    if child or native_logs:
        filter_native_logs()
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    return False


def is_child_process() -> bool:
    """True in a process started by multiprocessing, also while spawn re-runs the script's top level
    (the process has its name by then, but not yet its parent_process())."""
    return multiprocessing.parent_process() is not None or multiprocessing.current_process().name != "MainProcess"


def keep_line(line: bytes) -> bool:
    """False for the native log lines `filter_native_logs` drops (see the module docstring)."""
    return not any(pattern.match(line) for pattern in DROPPED_LINES)


_filter: tuple[threading.Thread, int] | None = None


def filter_native_logs() -> None:
    """Route file descriptor 2 through a thread that drops the lines `keep_line` rejects (once per process).

    The thread writes whole lines as they arrive; a partial line is passed on at once unless it may be
    the start of a native log line. At exit the pipe is closed and drained, so nothing written is lost.
    """
    global _filter
    if _filter is not None:
        return
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:  # no usable stderr (e.g. closed): nothing to filter
        return

    def pump() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if keep_line(line))
            if pending and not _may_be_native(pending):
                out, pending = out + pending, b""
            if out:
                os.write(original, out)
        if pending and keep_line(pending):
            os.write(original, pending)
        os.close(read_end)

    thread = threading.Thread(target=pump, name="pg_vla-stderr-filter", daemon=True)
    thread.start()
    _filter = (thread, original)
    atexit.register(_close_filter)


def _may_be_native(start: bytes) -> bool:
    banner = b"WARNING: All log messages"
    return (
        bool(re.match(rb"^[IWEF]\d{0,4}( |$)", start))
        or banner.startswith(start[: len(banner)])
        or start.startswith(b"To enable the following instructions")
    )


def _close_filter() -> None:
    global _filter
    if _filter is None:
        return
    thread, original = _filter
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(original, 2)  # closes the pipe's last write end: the thread drains it and stops
    thread.join(timeout=5)
    _filter = None


def quiet_worker() -> None:
    """`initializer` for process pools started from library code: the same settings in the worker."""
    configure([])
