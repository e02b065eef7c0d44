"""The local backend: `fastmedsam serve` as a child process of Slicer, so that predictions (torch) never run in
Slicer's Python, whose main thread holds the GIL while idle (see ../shared/docs/slicer-review.md, finding 1).

It binds 127.0.0.1 on a free port with a random token passed through the environment (never the command line),
is started once and reused across prompts and scenes, and is stopped when Slicer exits. Its output is drained by
a thread into a short buffer, shown when start-up fails. No Qt, no MRML: tested headless."""
from __future__ import annotations

import atexit
import collections
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Deque, List, Optional

from FastMedSAMLib.errors import BackendError

STARTUP_TIMEOUT_S = 300.0  # the first start may load torch and the weights from a cold disk


def python_executable() -> str:
    """Slicer's Python: the `PythonSlicer` launcher next to the application, else this interpreter."""
    exe = Path(sys.executable)
    if exe.stem.lower().startswith("slicer"):  # SlicerApp-real: the launcher sets up PYTHONHOME etc.
        for name in ("PythonSlicer" + exe.suffix, "PythonSlicer"):
            for folder in (exe.parent, exe.parent.parent / "bin"):
                if (folder / name).is_file():
                    return str(folder / name)
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_root() -> str:
    import FastMedSAMLib

    return str(Path(FastMedSAMLib.__file__).resolve().parents[1])


class BackendProcess:
    def __init__(self, device: str = "auto", python: Optional[str] = None) -> None:
        self.device = device
        self.python = python or python_executable()
        self.token = secrets.token_urlsafe(24)
        self.port = 0
        self.process: Optional[subprocess.Popen] = None
        self._output: Deque[str] = collections.deque(maxlen=200)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> List[str]:
        return [self.python, "-m", "FastMedSAMLib.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--device", self.device, "--log-level", "warning"]

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start the server and wait until /healthz answers; BackendError with its last output otherwise."""
        if self.running:
            return
        self.port = free_port()
        env = dict(os.environ)
        env["FASTMEDSAM_TOKEN"] = f"slicer={self.token}"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (engine_root(), env.get("PYTHONPATH"))))
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))  # leave Slicer a core
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"  # never send loopback through a proxy
        self.process = subprocess.Popen(self.command(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, errors="replace")
        threading.Thread(target=self._drain, args=(self.process,), name="FastMedSAM-backend-log", daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise BackendError(f"the local backend exited during start-up:\n{self.last_output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise BackendError(f"the local backend did not answer within {timeout:.0f} s:\n{self.last_output()}")

    def _drain(self, process: subprocess.Popen) -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            self._output.append(line.rstrip())

    def last_output(self, lines: int = 20) -> str:
        return "\n".join(list(self._output)[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (and anything it started); kill it if it does not stop in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        children = []
        try:
            import psutil

            children = psutil.Process(process.pid).children(recursive=True)
        except Exception:  # psutil missing or the process already gone: the server starts no children itself
            pass
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        for child in children:
            try:
                child.kill()
            except Exception:  # already gone
                pass


_local: Optional[BackendProcess] = None
_lock = threading.Lock()


def local_backend(device: str = "auto") -> BackendProcess:
    """The process's one local backend, started on first use (from the I/O thread, never the GUI thread)."""
    global _local
    with _lock:
        if _local is None:
            _local = BackendProcess(device)
            atexit.register(stop_local_backend)
        if not _local.running:
            _local.start()
        return _local


def stop_local_backend() -> None:
    global _local
    with _lock:
        if _local is not None:
            _local.stop()
            _local = None
