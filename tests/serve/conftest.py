"""Servers for the serve tests: a real `python -m lmstack.serve` process, or an app in a thread.

Every address is loopback; each server is stopped when its fixture ends.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen | None = None
    log: str = ""
    app: object = None

    @property
    def v1(self) -> str:
        return self.url + "/v1"


def _wait_healthy(url, proc=None, log_path=None, limit=90.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{open(log_path).read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


@contextmanager
def server_process(ckpt, tmp_path, *extra, env=None):
    """`python -m lmstack.serve` on a free loopback port, served as "tiny" (reported), "tiny-alias" and the path."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    e = dict(os.environ, **(env or {}))
    e.setdefault("OMP_NUM_THREADS", "1")  # the test clients share the machine's two cores
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lmstack.serve", "--model", str(ckpt), "--port", str(port),
                                 "--served-model-name", "tiny", "tiny-alias", *extra], stdout=log, stderr=subprocess.STDOUT, env=e)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, log_path)
        yield Served(f"http://127.0.0.1:{port}", proc, str(log_path))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def server_thread(lm, **cfg):
    """The app for an in-memory model, served by uvicorn in a thread of this process."""
    import uvicorn

    from lmstack.serve.app import create_app

    port = free_port()
    app = create_app(lm, model_name="tiny", **cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           timeout_graceful_shutdown=2))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", limit=30)
        yield Served(f"http://127.0.0.1:{port}", app=app)
    finally:
        server.should_exit = True
        t.join(timeout=15)


@pytest.fixture(scope="session")
def server(tiny_ckpt, tmp_path_factory):
    """One real server process for the serve tests (batch 32, queue 256)."""
    with server_process(tiny_ckpt, tmp_path_factory.mktemp("serve"), "--max-batch", "32") as s:
        yield s
