"""scripts/serve_policy.py in a child process, for tests and benchmarks: start, wait until it listens, stop.

    with ServerProcess(["--checkpoint_path", ckpt]) as server:   # --port 0: the system picks a free port
        client = WebsocketClientPolicy(server.host, server.port)

The child's stderr (its log) goes to `log_path` (or is discarded); its stdout is read for the
"listening on ws://HOST:PORT" line. Leaving the `with` block terminates it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

SERVE_SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "serve_policy.py"
_LISTENING = re.compile(r"listening on ws://(?P<host>[^\s:]+):(?P<port>\d+)")


class ServerProcess:
    def __init__(
        self,
        args: list[str],
        log_path: Path | None = None,
        startup_timeout_s: float = 300.0,
        script: Path = SERVE_SCRIPT,
    ) -> None:
        self.command = [sys.executable, str(script), "--port", "0", *args]
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.host, self.port = "", 0
        self._process: subprocess.Popen[str] | None = None
        self._address: tuple[str, int] | None = None
        self._seen = threading.Event()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server process was not started")
        return self._process.pid

    def start(self) -> "ServerProcess":
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - child owns it
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, text=True)
        if self.log_path:
            log.close()  # type: ignore[union-attr]  # the child keeps its own descriptor
        threading.Thread(target=self._read_stdout, daemon=True).start()
        return self

    def wait_ready(self) -> "ServerProcess":
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._seen.wait(0.2):
            if not self.alive():
                status = None if self._process is None else self._process.returncode
                raise RuntimeError(f"the policy server exited with status {status} before listening{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"the policy server did not listen within {self.startup_timeout_s:.0f} s{self._log_tail()}"
                )
        assert self._address is not None
        self.host, self.port = self._address
        return self

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def rss_mib(self) -> float:
        """Resident set size of the server process now (Linux /proc)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS line in /proc/{self.pid}/status")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start().wait_ready()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _read_stdout(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:  # drained until the child exits, so it never blocks on a full pipe
            match = _LISTENING.search(line)
            if match and not self._seen.is_set():
                self._address = (match["host"], int(match["port"]))
                self._seen.set()

    def _log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not Path(self.log_path).is_file():
            return ""
        tail = Path(self.log_path).read_text(errors="replace").splitlines()[-lines:]
        return ":\n" + "\n".join(tail)
