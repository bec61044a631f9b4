"""Support for the REST tests: the spec as a validator, the official helper library pointed at
our server (checking every response it gets), a manual clock, and ``sfu serve`` in a subprocess."""

from __future__ import annotations

import asyncio
import copy
import heapq
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest
from aiohttp import web
from referencing import Registry
from referencing.jsonschema import DRAFT7
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from sfu.credentials import Credentials, generate
from sfu.registry import RoomRegistry
from sfuserver.app import REGISTRY, ServerConfig, build_app

from signaling.tokens import mint_token

from .conftest import DEADLINE
from .helpers.clients import Clients

SPEC_PATH = Path(__file__).parent / "data" / "twilio_video_v1.json"
ERROR_FIELDS = {"code", "message", "more_info", "status"}
T = TypeVar("T")

# --- the spec as a validator -------------------------------------------------------------


def _strict(node: Any, in_rule: bool = False) -> Any:
    """OpenAPI 3.0 schema -> JSON Schema: ``nullable`` becomes a null alternative, and every
    object that lists properties must carry all of them and nothing else (our promise: every
    field of the spec, ``null`` where there is no value). Rule items keep optional fields."""
    if isinstance(node, list):
        return [_strict(n, in_rule) for n in node]
    if not isinstance(node, dict):
        return node
    rule = in_rule or node.get("format") in ("subscribe-rule", "recording-rule")
    out = {k: _strict(v, rule) for k, v in node.items() if k != "nullable"}
    if "properties" in node and node.get("type", "object") == "object" and not rule:
        out["required"] = sorted(node["properties"])
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


_DATE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_FORMATS = jsonschema.FormatChecker()
_FORMATS.checks("date-time")(lambda v: not isinstance(v, str) or bool(_DATE_TIME.fullmatch(v)))
_FORMATS.checks("uri")(lambda v: not isinstance(v, str) or bool(re.fullmatch(r"https?://[^\s/]+(/\S*)?", v)))


@dataclass
class Spec:
    document: dict[str, Any]
    strict: dict[str, Any]
    paths: list[tuple[re.Pattern[str], str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry: Registry[Any] = Registry().with_resource("spec", DRAFT7.create_resource(self.strict))

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        for pattern, template in self.paths:
            if pattern.fullmatch(path):
                op = self.document["paths"][template].get(method.lower())
                return (template, op) if op is not None else None
        return None

    def check(self, method: str, url: str, status: int, body: str) -> Any:
        """Assert the response is what the spec promises for this operation and status."""
        path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
        found = self.operation(method, "/" + path)
        assert found is not None, f"{method} /{path} is not an operation of the spec"
        template, op = found
        data = json.loads(body) if body else None
        if status >= 400:
            assert isinstance(data, dict) and set(data) == ERROR_FIELDS, f"not Twilio's error body: {body}"
            assert data["status"] == status and isinstance(data["code"], int), data
            assert 400 <= status < 500, f"{method} {url} answered {status}: {body}"
            return data
        assert str(status) in op["responses"], f"{method} {template} answered {status}, spec has {list(op['responses'])}"
        pointer = "/".join(["#", "paths", template.replace("/", "~1"), method.lower(), "responses", str(status)])
        schema = {"$ref": f"spec{pointer}/content/application~1json/schema"}
        jsonschema.Draft7Validator(schema, registry=self.registry, format_checker=_FORMATS).validate(data)
        return data


@lru_cache(maxsize=1)
def spec() -> Spec:
    document = json.loads(SPEC_PATH.read_text())
    result = Spec(document, _strict(copy.deepcopy(document)))
    for template in document["paths"]:
        pattern = re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)))
        result.paths.append((pattern, template))
    return result


# --- the official helper library against our server --------------------------------------


class CheckedHttpClient(TwilioHttpClient):
    """The helper's own HTTP client; every response it receives is checked against the spec."""

    def __init__(self) -> None:
        super().__init__()
        self.session.trust_env = False  # type: ignore[union-attr]  # loopback only, never a proxy
        self.checked = 0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        response = super().request(method, url, *args, **kwargs)
        spec().check(method, url, response.status_code, response.text)
        self.checked += 1
        return response


def helper_client(http: str, username: str, password: str) -> Client:
    client = Client(username, password, http_client=CheckedHttpClient())
    client.video.base_url = http
    return client


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a (blocking) helper-library call off the event loop that runs the server."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def until(fetch: Callable[[], Any], predicate: Callable[[Any], bool], message: str, timeout: float = DEADLINE) -> Any:
    """Call the blocking ``fetch`` (off the loop) until its result satisfies ``predicate``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await call(fetch)
        if predicate(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last: {value!r}")
        await asyncio.sleep(0.05)


async def raw(http: str, credentials: Credentials | None, method: str, path: str, check: bool = True, **kwargs: Any) -> tuple[int, Any]:
    """A plain HTTP request (for what the helper would never send); checked against the spec."""
    import aiohttp

    headers = dict(kwargs.pop("headers", {}))
    if credentials is not None:
        headers["Authorization"] = aiohttp.encode_basic_auth(credentials.account_sid, credentials.auth_token)
    async with aiohttp.ClientSession() as session:
        async with session.request(method, http + path, headers=headers, **kwargs) as response:
            body = await response.text()
    if check and response.status != 405 and spec().operation(method, path.split("?")[0]) is not None:
        return response.status, spec().check(method, http + path, response.status, body)
    return response.status, json.loads(body) if body else None


# --- a clock the tests move --------------------------------------------------------------


class ManualClock:
    """Replaces wall time for the room model: ``advance`` fires the timers that fall due."""

    def __init__(self) -> None:
        self.time = datetime(2030, 1, 1, tzinfo=timezone.utc)
        self._timers: list[tuple[datetime, int, Callable[[], Any], list[bool]]] = []
        self._count = 0

    def now(self) -> datetime:
        return self.time

    def call_later(self, delay: float, callback: Callable[[], Any]) -> "ManualTimer":
        cancelled = [False]
        self._count += 1
        heapq.heappush(self._timers, (self.time + timedelta(seconds=delay), self._count, callback, cancelled))
        return ManualTimer(cancelled)

    def advance(self, seconds: float) -> None:
        end = self.time + timedelta(seconds=seconds)
        while self._timers and self._timers[0][0] <= end:
            due, _, callback, cancelled = heapq.heappop(self._timers)
            self.time = max(self.time, due)
            if not cancelled[0]:
                callback()
        self.time = end


@dataclass
class ManualTimer:
    cancelled: list[bool]

    def cancel(self) -> None:
        self.cancelled[0] = True


# --- servers -----------------------------------------------------------------------------


@dataclass
class RestServer:
    http: str
    url: str
    credentials: Credentials
    registry: RoomRegistry
    app: web.Application
    clock: ManualClock

    def client(self) -> Client:
        return helper_client(self.http, self.credentials.account_sid, self.credentials.auth_token)

    def token(self, identity: str, room: str | None = None) -> str:
        return mint_token(self.credentials, identity, room=room)


@pytest.fixture
async def rest_server(tmp_path: Path, netns: None) -> AsyncIterator[RestServer]:
    """The real app on a loopback port, with the room model on a ManualClock."""
    clock = ManualClock()
    credentials = generate()
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path, reconnect_grace=3.0)
    app = build_app(config, credentials, clock=clock.now, call_later=clock.call_later)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield RestServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/signaling", credentials, app[REGISTRY], app, clock)
    await runner.cleanup()


@pytest.fixture
async def rest_clients(rest_server: RestServer) -> AsyncIterator[Clients]:
    """Python client participants of ``rest_server``, disconnected at teardown."""
    joined = Clients(rest_server)  # type: ignore[arg-type]
    yield joined
    await joined.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SfuProcess:
    """``sfu serve`` in a subprocess, with credentials from the environment."""

    def __init__(self, data_dir: Path, credentials: Credentials, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.credentials = credentials
        self.port = port or free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"

    def start(self) -> "SfuProcess":
        env = {**os.environ, "SFU_ACCOUNT_SID": self.credentials.account_sid, "SFU_AUTH_TOKEN": self.credentials.auth_token,
               "SFU_API_KEY_SID": self.credentials.api_key_sid, "SFU_API_KEY_SECRET": self.credentials.api_key_secret}  # fmt: skip
        command = [sys.executable, "-m", "sfuserver.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"sfu serve exited: {self.log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(self.http + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"sfu serve did not answer within {DEADLINE}s")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(DEADLINE)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> Client:
        return helper_client(self.http, self.credentials.account_sid, self.credentials.auth_token)
