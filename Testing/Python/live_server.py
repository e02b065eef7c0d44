"""A real uvicorn server on a free loopback port, run in a thread of the test process (or as a `fastmedsam serve`
child process when a test must kill it)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
SERVER_THREADS = 1  # OMP_NUM_THREADS of the server processes the tests start


@contextmanager
def as_the_server_computes() -> Iterator[None]:
    """Run the test process's torch on the server processes' thread count, for a local Session whose masks are
    compared with theirs bit for bit: the encoder's float sums move at the 1e-7 level with the thread count, which
    the bf16 decoder (the default runtime on bf16 CPUs) can turn into a boundary pixel."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(SERVER_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 120.0, process: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no server answered at {url} within {timeout} s")


class ThreadServer:
    """`create_app(ServerSettings(**settings))` served by uvicorn in a daemon thread."""

    def __init__(self, port: Optional[int] = None, session_factory=None, **settings: Any) -> None:
        import uvicorn

        from FastMedSAMLib.server.app import create_app
        from FastMedSAMLib.server.settings import ServerSettings

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(ServerSettings(port=self.port, **settings), session_factory)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_healthy(self.url)

    @property
    def state(self):
        return self.app.state.fastmedsam

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class ProcessServer:
    """`python -m FastMedSAMLib.cli serve` as a child process (killable like a crashed server)."""

    def __init__(self, port: Optional[int] = None, env: Optional[Dict[str, str]] = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(SERVER_THREADS), **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "FastMedSAMLib.cli", "serve", "--port", str(self.port), "--device", "cpu",
             "--log-level", "warning"], env=full_env, cwd=str(REPO))
        wait_healthy(self.url, process=self.process)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
