"""Run several script command lines one after the other in one interpreter, as `python SCRIPT ARGS...` would.

    python tests/readme_runner.py SPEC.json

SPEC.json: {"commands": [{"name": ..., "argv": [script, arg, ...], "after": [REPORT, NAME]}, ...],
"log_dir": DIR, "keep_going": false} ("after", optional: wait until another runner's REPORT lists command
NAME as done). Each script runs as `__main__` (runpy) with `sys.argv` set and its folder first on
`sys.path`, so its `if __name__ == "__main__"` block runs; its stdout and stderr (file descriptors 1 and 2,
so child processes' output too) go to DIR/<name>.out and DIR/<name>.err. After each command
DIR/report.json lists {"name", "rc", "seconds"} of the commands run so far; the first failing command
(exit status other than 0, or an exception) ends the run unless "keep_going" is true. One interpreter for
many commands saves the start-up (torch, tensorflow) that separate processes would each pay
(tests/test_readme_commands.py).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path


def run_one(argv: list[str], out_path: Path, err_path: Path) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    saved_argv, saved_path = sys.argv, list(sys.path)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            sys.argv = list(argv)
            sys.path[0] = str(Path(argv[0]).resolve().parent)  # as `python SCRIPT` sets it
            runpy.run_path(argv[0], run_name="__main__")
            rc = 0
        except SystemExit as exit_:
            code = exit_.code
            if code is None or isinstance(code, int):
                rc = code or 0
            else:  # sys.exit("message"): printed to stderr, status 1
                print(code, file=sys.stderr)
                rc = 1
        except BaseException:  # noqa: BLE001 - reported as the command's failure
            traceback.print_exc()
            rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            sys.argv, sys.path[:] = saved_argv, saved_path
    for fd in saved:
        os.close(fd)
    return rc


def wait_for(report_path: str, name: str, timeout_s: float = 300.0) -> str | None:
    """None once `name` succeeded in the report at `report_path`, else why not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done = {entry["name"]: entry["rc"] for entry in json.loads(Path(report_path).read_text())}
        except (OSError, ValueError):
            done = {}
        if name in done:
            return None if done[name] == 0 else f"{name} failed (exit status {done[name]})"
        time.sleep(0.5)
    return f"{name} did not finish within {timeout_s:.0f} s"


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    log_dir = Path(spec["log_dir"])
    log_dir.mkdir(parents=True, exist_ok=True)
    report: list[dict] = []
    failed = False
    for command in spec["commands"]:
        name = command["name"]
        start = time.perf_counter()
        problem = wait_for(*command["after"]) if command.get("after") else None
        if problem:
            (log_dir / f"{name}.err").write_text(f"not run: it needs {problem}\n")
            rc = 1
        else:
            rc = run_one(command["argv"], log_dir / f"{name}.out", log_dir / f"{name}.err")
        report.append({"name": name, "rc": rc, "seconds": round(time.perf_counter() - start, 2)})
        partial = log_dir / "report.json.tmp"  # renamed: another runner may be reading it
        partial.write_text(json.dumps(report, indent=1))
        partial.replace(log_dir / "report.json")
        failed = failed or rc != 0
        if rc != 0 and not spec.get("keep_going"):
            break
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
