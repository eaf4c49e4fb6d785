"""The README/BUILD.md code blocks, found by their ``<!-- snippet: NAME ... -->`` marker, and what it takes
to run them here: a ``.venv/bin/python`` in a scratch folder, free ports, and the ``tensorflow/serving``
container's command line worked out from a ``docker run`` line (no docker on the test machines).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The tensorflow/serving image (tensorflow_serving/tools/docker/Dockerfile): its environment defaults and
# its entrypoint, which starts the server with these flags followed by the arguments of `docker run`.
IMAGE = "tensorflow/serving"
IMAGE_ENV = {"GRPC_PORT": "8500", "PORT": "8501", "MODEL_BASE_PATH": "/models", "MODEL_NAME": "model"}
ENTRYPOINT = ["--port={GRPC_PORT}", "--rest_api_port={PORT}", "--model_name={MODEL_NAME}",
              "--model_base_path={MODEL_BASE_PATH}/{MODEL_NAME}"]


def snippet(doc: str, name: str) -> str:
    """The fenced code block right after ``<!-- snippet: NAME`` in REPO/doc (its body, fences excluded)."""
    text = (REPO / doc).read_text(encoding="utf-8")
    marker = f"<!-- snippet: {name} "
    assert text.count(marker) == 1, f"{doc}: expected one '{marker}' marker"
    after = text[text.index(marker):]
    block = re.match(r"<!--.*?-->\n```\w*\n(.*?)```", after, re.S)
    assert block, f"{doc}: no code block right after '{marker}'"
    return block.group(1)


def commands(block: str) -> list[str]:
    """A shell block's commands, one per entry, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch(root: Path) -> dict[str, str]:
    """Makes ``root/.venv/bin/python`` this interpreter (with this repo importable); returns the environment."""
    shim = root / ".venv" / "bin" / "python"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def with_ports(command: str, ports: dict[int, int]) -> str:
    """``command`` with each documented port number replaced by the free port standing in for it."""
    for documented, port in ports.items():
        command = re.sub(rf"(?<![\d.]){documented}(?!\d)", str(port), command)
    return command


def run(command: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """One documented command through bash, as a user would paste it."""
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class DockerRun:
    """A ``docker run ... IMAGE ARGS`` line: its mounts (container path -> host path), environment,
    published ports (container -> host) and the arguments after the image."""

    image: str
    mounts: dict[str, Path] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, command: str, pwd: Path) -> "DockerRun":
        tokens = shlex.split(command.replace("$PWD", str(pwd)))
        assert tokens[:2] == ["docker", "run"], command
        run = cls(image="")
        i = 2
        while i < len(tokens) and tokens[i].startswith("-"):
            opt = tokens[i]
            if opt in ("-v", "-e", "-p"):
                value = tokens[i + 1]
                i += 2
                if opt == "-v":
                    host, container = value.split(":")[:2]
                    run.mounts[container.rstrip("/")] = Path(host)
                elif opt == "-e":
                    key, _, val = value.partition("=")
                    run.env[key] = val
                else:
                    host, container = value.split(":")
                    run.ports[int(container)] = int(host)
            else:
                assert opt == "--rm", f"option {opt} not understood by this test"
                i += 1
        run.image, run.args = tokens[i], tokens[i + 1:]
        return run

    def host_path(self, container_path: str) -> Path | None:
        """Where ``container_path`` lives on the host through the mounts (None: not under any mount)."""
        for dst, src in sorted(self.mounts.items(), key=lambda m: -len(m[0])):
            if container_path == dst or container_path.startswith(dst + "/"):
                return src / container_path[len(dst):].lstrip("/")
        return None

    def server_flags(self) -> list[str]:
        """The container's server command line: the image entrypoint's flags, then the run's arguments."""
        env = {**IMAGE_ENV, **self.env}
        return [flag.format(**env) for flag in ENTRYPOINT] + self.args


def start_server(flags: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """``python -m serving.server FLAGS`` in the background, its output in ``cwd/server.log``."""
    return _background([sys.executable, "-m", "serving.server", *flags], cwd, env)


def start_documented_server(command: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """A documented ``serving.server`` line in the background (exec: the signal reaches the server itself)."""
    return _background(["bash", "-c", f"exec {command}"], cwd, env)


def _background(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(cwd / "server.log", "w") as log:  # a file, not a pipe: a chatty server never blocks on it
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log_path = cwd / "server.log"
    return process


def wait_available(process: subprocess.Popen, rest_port: int, models: list[str], timeout: float = 180) -> None:
    """Until every model's status answers 200 on REST; the server's output if it exits first."""
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{process.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/{pending[0]}", timeout=5):
                pending.pop(0)
                continue
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        assert time.monotonic() < deadline, f"models {pending} not available after {timeout}s"
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM, then the exit code and everything the server printed."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.returncode, process.log_path.read_text()
