"""sfuserver/web.py over real HTTP on loopback: the page's files and the development token
endpoint, which is on for loopback binds or with --dev-tokens, and refused (403) otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from sfu.credentials import Credentials
from sfuserver.cli import parser
from sfuserver.web import dev_tokens_enabled, is_loopback
from signaling.tokens import verify_token

from .conftest import running_server


@asynccontextmanager
async def running(tmp_path: Path, host: str, dev_tokens: bool | None = None) -> AsyncIterator[tuple[str, Credentials]]:
    """The app as configured for ``host``, but always bound to 127.0.0.1 for the test."""
    async with running_server(tmp_path, host=host, dev_tokens=dev_tokens) as (server, _):
        yield server.http, server.credentials


async def post_token(base: str, body: object, content_type: str = "application/json") -> tuple[int, dict]:
    import json

    data = body if isinstance(body, str) else json.dumps(body)
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/dev/token", data=data, headers={"Content-Type": content_type}) as response:
            return response.status, await response.json(content_type=None)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", True), ("127.4.5.6", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False), ("sfu.example.com", False)],
)
def test_loopback_hosts(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected
    assert dev_tokens_enabled(host, None) is expected
    assert dev_tokens_enabled(host, True) is True
    assert dev_tokens_enabled(host, False) is False


def test_cli_flag() -> None:
    assert parser().parse_args(["serve"]).dev_tokens is None
    assert parser().parse_args(["serve", "--dev-tokens"]).dev_tokens is True
    assert parser().parse_args(["serve", "--no-dev-tokens"]).dev_tokens is False


async def test_dev_tokens_on_loopback(tmp_path: Path) -> None:
    async with running(tmp_path, "127.0.0.1") as (base, credentials):
        status, body = await post_token(base, {"identity": "ada", "room": "standup"})
        assert status == 200, body
        grant = verify_token(body["token"], credentials)
        assert (grant.identity, grant.room) == ("ada", "standup")
        status, body = await post_token(base, {"identity": "bob"})  # any room
        assert status == 200 and verify_token(body["token"], credentials).room is None
        # Bad requests say what is wrong; a non-JSON body (a cross-site form could send one) is refused.
        assert (await post_token(base, {"room": "x"}))[0] == 400
        assert (await post_token(base, {"identity": ""}))[0] == 400
        assert (await post_token(base, {"identity": "x" * 300}))[0] == 400
        assert (await post_token(base, {"identity": "a", "room": 5}))[0] == 400
        assert (await post_token(base, "[1, 2]"))[0] == 400
        assert (await post_token(base, "{not json"))[0] == 400
        assert (await post_token(base, "identity=ada", "application/x-www-form-urlencoded"))[0] == 415
        assert (await post_token(base, '{"identity": "ada"}', "text/plain"))[0] == 415


@pytest.mark.parametrize(("host", "flag", "status"), [("0.0.0.0", None, 403), ("10.1.2.3", None, 403), ("127.0.0.1", False, 403), ("0.0.0.0", True, 200)])
async def test_dev_tokens_need_loopback_or_the_flag(tmp_path: Path, host: str, flag: bool | None, status: int) -> None:
    async with running(tmp_path, host, flag) as (base, credentials):
        got, body = await post_token(base, {"identity": "ada", "room": "standup"})
        assert got == status, body
        if status == 403:
            assert "token" not in body and "--dev-tokens" in body["message"]
        else:
            assert verify_token(body["token"], credentials).identity == "ada"


async def test_serves_the_page_and_the_module(tmp_path: Path) -> None:
    async with running(tmp_path, "127.0.0.1") as (base, _), aiohttp.ClientSession() as http:
        async with http.get(base + "/") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            html = await response.text()
            assert '<script type="module" src="app.js">' in html and 'for="room-input"' in html
        for name, kind in (("sdk.js", "text/javascript"), ("app.js", "text/javascript"), ("style.css", "text/css"), ("index.html", "text/html")):
            async with http.get(f"{base}/{name}") as response:
                assert response.status == 200, name
                assert response.headers["Content-Type"].startswith(kind), name
                assert response.headers["X-Content-Type-Options"] == "nosniff"
        async with http.get(base + "/sdk.js") as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"  # other apps' pages import it
            assert "export async function connect" in await response.text()
        for path in ("/nope.js", "/%2e%2e/pyproject.toml", "/..%2fpyproject.toml", "/.gitignore", "/README.md", "/web-client/sdk.js"):
            async with http.get(base + path) as response:
                assert response.status == 404, path
        async with http.get(base + "/healthz") as response:  # the other routes are untouched
            assert response.status == 200 and (await response.json())["status"] == "ok"


async def test_sfu_serve_serves_the_page_with_dev_tokens_on_loopback(tmp_path: Path) -> None:
    """The real command, as README says to run it: the page and dev tokens on its default host."""
    import asyncio
    import socket
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfuserver.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                try:
                    async with http.get(base + "/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert process.returncode is None, "sfu serve exited"
                assert loop.time() < deadline, "sfu serve did not come up"
                await asyncio.sleep(0.1)
            async with http.get(base + "/") as response:
                assert response.status == 200 and "Join a room" in await response.text()
        status, body = await post_token(base, {"identity": "ada", "room": "standup"})
        assert status == 200 and body["token"].count(".") == 2
    finally:
        process.terminate()
        _, stderr = await process.communicate()
    assert b"/dev/token is on" in stderr and b"not for production" in stderr, stderr.decode()[-2000:]


async def post_token_as(base: str, host: str | None, origin: str | None = None) -> tuple[int, dict]:
    """POST /dev/token with the given raw Host (and Origin) headers, as a browser that reached
    the server under that name would send them."""
    headers = {"Content-Type": "application/json"}
    if host is not None:
        headers["Host"] = host
    if origin is not None:
        headers["Origin"] = origin
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/dev/token", data='{"identity": "ada"}', headers=headers) as response:
            return response.status, await response.json(content_type=None)


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
async def test_dev_tokens_refuse_dns_rebinding_and_other_origins(tmp_path: Path, bind: str) -> None:
    """Only a loopback Host with this server's port, and a same-origin Origin, get a token: a
    rebound name (evil.example resolving to 127.0.0.1) or another site's page gets 403. The
    rule holds for a server bound to every interface with --dev-tokens too."""
    async with running(tmp_path, bind, dev_tokens=True) as (base, credentials):
        port = int(base.rsplit(":", 1)[1])
        allowed = [
            (f"127.0.0.1:{port}", None),
            (f"localhost:{port}", None),
            (f"LOCALHOST:{port}", f"http://localhost:{port}"),
            (f"[::1]:{port}", f"http://[::1]:{port}"),
            (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
        ]
        for host, origin in allowed:
            status, body = await post_token_as(base, host, origin)
            assert status == 200, (host, origin, body)
            assert verify_token(body["token"], credentials).identity == "ada"
        refused = [
            (f"evil.example:{port}", None),  # DNS rebinding: the page's own name in Host
            (f"evil.example:{port}", f"http://evil.example:{port}"),
            ("evil.example", None),
            (f"127.0.0.2:{port}", None),
            (f"192.168.1.5:{port}", None),  # the LAN address of a 0.0.0.0 server: not loopback by name
            (f"127.0.0.1:{port + 1}", None),  # another port: another origin
            ("127.0.0.1", None),  # port 80 implied
            (f"localhost.:{port}", None),
            (f"localhost:{port}@evil.example", None),
            (f"127.0.0.1:{port}", "http://evil.example"),  # another site's page posting here
            (f"127.0.0.1:{port}", "null"),
            (f"127.0.0.1:{port}", f"http://localhost:{port}"),  # same machine, other origin
            (f"127.0.0.1:{port}", f"https://127.0.0.1:{port}"),
            (f"127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"),
        ]
        for host, origin in refused:
            status, body = await post_token_as(base, host, origin)
            assert status == 403, (host, origin, body)
            assert set(body) == {"status", "message"} and body["status"] == 403, body  # the JSON problem shape
            assert "token" not in body and "localhost" in body["message"], body


async def test_csp_never_echoes_an_injected_host(tmp_path: Path) -> None:
    """The page's Content-Security-Policy is not built from a raw Host: `Host: x; script-src *`
    must not add a directive (nor a comma a second policy)."""
    async with running(tmp_path, "127.0.0.1") as (base, _), aiohttp.ClientSession() as http:
        port = int(base.rsplit(":", 1)[1])
        for host in ("x; script-src *", "x, script-src *", "x script-src *", "x;script-src 'unsafe-inline'",
                     f"127.0.0.1:{port} 'unsafe-eval'", "a\tb", f"127.0.0.1:{port}", f"[::1]:{port}", "sfu.example.com"):
            async with http.get(base + "/", headers={"Host": host}) as response:
                assert response.status == 200, host
                csp = response.headers["Content-Security-Policy"]
            assert "," not in csp and "*" not in csp and "unsafe" not in csp, (host, csp)
            directives = [d.strip().split() for d in csp.split(";")]
            names = [d[0] for d in directives]
            assert len(names) == len(set(names)), (host, csp)
            assert names == ["default-src", "script-src", "style-src", "img-src", "media-src", "connect-src",
                             "frame-ancestors", "base-uri", "form-action", "object-src"], (host, csp)
            assert dict((d[0], d[1:]) for d in directives)["script-src"] == ["'self'"], (host, csp)
            connect = dict((d[0], d[1:]) for d in directives)["connect-src"]
            assert connect[0] == "'self'", (host, csp)
            assert connect[1:] in ([], [f"ws://{host}", f"wss://{host}"]), (host, csp)
            if host in (f"127.0.0.1:{port}", f"[::1]:{port}", "sfu.example.com"):
                assert connect[1:] == [f"ws://{host}", f"wss://{host}"], (host, csp)


async def test_serves_a_favicon(tmp_path: Path) -> None:
    """Browsers ask for /favicon.ico on every load: it exists (a real ICO), and the page links it
    and an SVG version."""
    async with running(tmp_path, "127.0.0.1") as (base, _), aiohttp.ClientSession() as http:
        async with http.get(base + "/favicon.ico") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "image/x-icon"
            icon = await response.read()
        assert icon[:4] == b"\x00\x00\x01\x00" and int.from_bytes(icon[4:6], "little") >= 1  # ICO header, some images
        async with http.get(base + "/favicon.svg") as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/svg+xml"
            assert "<svg" in await response.text()
        async with http.get(base + "/") as response:
            html = await response.text()
        assert '<link rel="icon" href="favicon.ico"' in html and '<link rel="icon" href="favicon.svg" type="image/svg+xml">' in html
