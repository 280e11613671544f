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
    """The server on ``db``, with the ``LIFELONG_REC_*`` variables in ``env`` (none inherited
    from this process) and its output in ``log``."""

    def __init__(self, db: Path, env: dict[str, str], log: Path) -> None:
        self.db = db
        self.log = log
        self.url = f"http://127.0.0.1:{free_port()}"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_REC_")}
        command = [sys.executable, "-m", "lifelong_rec", "serve", "--db", str(db), "--port",
                   self.url.rsplit(":", 1)[1], "--log-level", "warning"]  # fmt: skip
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                command, env=inherited | env, stdout=output, stderr=subprocess.STDOUT
            )

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
