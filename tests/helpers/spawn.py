"""Starts ``python -m serving.server`` as a child process on ports it picks itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def spawn_server(flags: list[str], timeout_s: float = 120.0
                 ) -> tuple[subprocess.Popen, int, int, list[str]]:
    """Starts ``python -m serving.server FLAGS`` (e.g. with ``--port 0 --rest_api_port 0``).

    Waits until it logs both API ports. Returns ``(proc, rest_port, grpc_port, lines)``: ``lines`` keeps
    filling with its stderr from a daemon thread. RuntimeError (with the log's tail) if it exits or stalls.
    """
    proc = subprocess.Popen([sys.executable, "-m", "serving.server", *flags], cwd=REPO, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        text = "".join(lines)
        rest, grpc_port = (re.search(rf"{api} API on [\d.]+:(\d+)", text) for api in ("REST", "gRPC"))
        if rest and grpc_port:
            return proc, int(rest.group(1)), int(grpc_port.group(1)), lines
        time.sleep(0.1)
    proc.kill()
    proc.wait(10)
    raise RuntimeError("the server did not start:\n" + "".join(lines)[-2000:])
