"""``lifelong-rec serve`` in a subprocess on a free loopback port: what the service tests run
against (the real command, the real uvicorn)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """The server on ``db`` (a path or a PostgreSQL URL), with the ``LIFELONG_REC_*`` variables
    in ``env`` (none inherited from this process), more ``args`` for ``serve``, and its output
    in ``log``."""

    def __init__(
        self, db: Path | str, env: dict[str, str], log: Path, args: tuple[str, ...] = ()
    ) -> None:
        self.db = db
        self.log = log
        self.url = f"http://127.0.0.1:{free_port()}"
        self.command = [sys.executable, "-m", "lifelong_rec", "serve", "--db", str(db), "--port",
                        self.url.rsplit(":", 1)[1], "--log-level", "warning", *args]  # fmt: skip
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_REC_")}
        self.env = inherited | env
        self.process = self._launch()

    def _launch(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as output:  # a restart's output follows the last one's
            return subprocess.Popen(
                self.command, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )

    def restart(self) -> None:
        """Start the same command again (on the same port), once the last one has ended."""
        assert self.process.poll() is not None, "the process is still running"
        self.process = self._launch()

    def kill(self) -> None:
        """SIGKILL, and wait for the end."""
        self.process.kill()
        self.process.wait(timeout=10)

    def wait_healthy(self, timeout: float) -> None:
        """Return once ``/healthz`` answers; fail with the server's output if it exits first
        or does not answer within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited:\n{self.output()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"no /healthz after {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM (a clean stop persists the newest model), SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


class LearnProcess(ServeProcess):
    """``lifelong-rec learn`` on a PostgreSQL ``db``: a learner process of its own."""

    def __init__(self, db: str, env: dict[str, str], log: Path, args: tuple[str, ...] = ()) -> None:
        self.db = db
        self.log = log
        self.url = ""
        self.command = [sys.executable, "-m", "lifelong_rec", "learn", "--db", db, *args]
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_REC_")}
        self.env = inherited | env
        self.process = self._launch()

    def wait_for(self, text: str, timeout: float, start: int = 0) -> float:
        """Wait until ``text`` is in the output after character ``start``; when it came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace")[start:]:
                return time.monotonic()
            assert self.process.poll() is None, f"the learner exited:\n{self.output()}"
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not said within {timeout} s:\n{self.output()}")
