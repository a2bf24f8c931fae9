"""Real `beacon` OS processes for the CLI and health tests: start with a clean environment, poll, stop."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from beacon.redis_server import stop_process

BEACON = [sys.executable, "-m", "beacon.cli"]
OPS_URL = re.compile(r"/metrics and /healthz on (http://\S+)")


def clean_env(**settings: str) -> dict[str, str]:
    """The caller's environment without any Beacon or Redis setting, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BEACON_") and key != "REDIS_URL"}
    env.update(PYTHONUNBUFFERED="1", **settings)
    return env


class Process:
    """One `beacon <args>` process in its own session, its output (stdout and stderr) in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        """Start it; returns itself."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*BEACON, *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        """Whether it runs."""
        return self._process is not None and self._process.poll() is None

    def signal(self, signum: int) -> None:
        """Send a signal (SIGSTOP freezes it, SIGCONT lets it run on)."""
        assert self._process is not None and self.alive, self.log()
        os.kill(self._process.pid, signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        """Its exit code, once it has exited by itself."""
        assert self._process is not None
        return self._process.wait(timeout_s)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it hangs); a no-op when not running."""
        process, self._process = self._process, None
        stop_process(process)

    def log(self) -> str:
        """Everything it printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def ops_url(self, timeout_s: float = 30.0) -> str:
        """The /metrics and /healthz base URL a worker or connectors process logged at start."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = OPS_URL.search(self.log())
            if match:
                return match.group(1)
            assert self.alive, f"beacon {self.args} exited:\n{self.log()}"
            await asyncio.sleep(0.05)
        raise AssertionError(f"beacon {self.args} logged no ops URL within {timeout_s}s:\n{self.log()}")


async def run_beacon(*args: str, **settings: str) -> tuple[int, str, str]:
    """Run `beacon ARGS` to its end with only `settings` as its BEACON_* environment: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *BEACON,
        *args,
        env=clean_env(**settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """Status and body (JSON when it is JSON) of a GET."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        text = await response.text()
        return response.status, await response.json() if response.content_type == "application/json" else text


async def wait_health(
    session: aiohttp.ClientSession, url: str, process: Process, status: int = 200, timeout_s: float = 30.0
) -> Any:
    """Poll `url` (a /healthz) until it answers `status`; returns the body. Fails if the process exits."""
    deadline = time.monotonic() + timeout_s
    last: Any = "no answer"
    while time.monotonic() < deadline:
        assert process.alive, f"beacon {process.args} exited:\n{process.log()}"
        try:
            code, body = await get(session, url)
            if code == status:
                return body
            last = (code, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} not {status} within {timeout_s}s (last: {last}):\n{process.log()[-3000:]}")
