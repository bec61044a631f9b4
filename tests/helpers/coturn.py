"""A real coturn (Debian's ``turnserver``) inside the test namespace, for the TURN tests.

It listens and relays on 10.213.0.1 (tests/netns.sh's test interface) only, so nothing leaves
the namespace. Either with a static long-term user ``u:p`` or, given ``auth_secret``, with
coturn's TURN REST credentials (``use-auth-secret`` / ``static-auth-secret``).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiortc import RTCIceServer

from ..conftest import DEADLINE

TEST_ADDRESS = "10.213.0.1"  # tests/netns.sh's test interface
USER, PASSWORD = "u", "p"


@dataclass
class Coturn:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"turn:{TEST_ADDRESS}:{self.port}"

    @property
    def ice_server(self) -> RTCIceServer:
        """The static user's entry (meaningless when coturn runs with an auth secret)."""
        return RTCIceServer(urls=self.url, username=USER, credential=PASSWORD)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((TEST_ADDRESS, 0))
        return int(s.getsockname()[1])


def _answers_stun(port: int) -> bool:
    """True when something on ``port`` answers a STUN binding request."""
    transaction = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(request, (TEST_ADDRESS, port))
            data = s.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[8:20] == transaction


@contextmanager
def running_coturn(directory: Path, auth_secret: str | None = None) -> Iterator[Coturn]:
    """coturn on a free port of 10.213.0.1, its files in ``directory``; stopped on exit."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("coturn's turnserver is missing: tests/run.sh installs Debian's coturn package")
    port = _free_udp_port()
    log = directory / "turnserver.log"
    auth = ["--use-auth-secret", "--static-auth-secret", auth_secret] if auth_secret else ["--lt-cred-mech", "--user", f"{USER}:{PASSWORD}"]
    command = [
        binary, "-n", "--no-cli", "--no-tls", "--no-dtls",
        "--listening-ip", TEST_ADDRESS, "--relay-ip", TEST_ADDRESS, "--listening-port", str(port),
        "--min-port", "50000", "--max-port", "50999", *auth, "--realm", "test",
        "--log-file", str(log), "--simple-log", "--no-stdout-log",
        "--pidfile", str(directory / "turnserver.pid"), "--userdb", str(directory / "turndb"),
    ]  # fmt: skip
    output = (directory / "turnserver.out").open("wb")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + DEADLINE
        while not _answers_stun(port):  # each probe waits up to 0.5 s for an answer
            if process.poll() is not None:
                text = (directory / "turnserver.out").read_text(errors="replace")
                pytest.fail(f"turnserver exited with {process.returncode}: {text}")
            if time.monotonic() > end:
                pytest.fail(f"turnserver did not answer STUN on {TEST_ADDRESS}:{port} within {DEADLINE}s")
        yield Coturn(port, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()
