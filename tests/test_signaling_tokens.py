"""Access tokens at the signaling door: each refusal is an `error` with its code and the
socket closes before any media exists; tokens from the official twilio helper get in."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import VideoGrant

from sfu.credentials import generate
from signaling.client import SignalingError, connect

from .conftest import Server
from .helpers.clients import Clients, EventLog, RawSocket, connect_message, subscribed_media
from .test_tokens import forge, good_header


def claims(server: Server, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    c = server.credentials
    payload: dict[str, Any] = {
        "jti": f"{c.api_key_sid}-{now}",
        "grants": {"identity": "mallory", "video": {}},
        "iss": c.api_key_sid,
        "sub": c.account_sid,
        "nbf": now,
        "exp": now + 600,
    }
    payload.update(overrides)
    return payload


def signed(server: Server, header: dict[str, Any] | None = None, secret: str | None = None, digest: Any = hashlib.sha256, **overrides: Any) -> str:
    """A token with the given header/claims, signed with the server's secret unless told."""
    return forge(good_header() if header is None else header, claims(server, **overrides), secret or server.credentials.api_key_secret, digest)


def later(seconds: int) -> int:
    return int(time.time()) + seconds


# (label, token maker, expected code): the token goes into `connect` for room "room".
REFUSALS: list[tuple[str, Callable[[Server], Any], int]] = [
    ("bad signature", lambda s: signed(s, secret=generate().api_key_secret), 20107),
    ("signature stripped", lambda s: signed(s).rsplit(".", 1)[0] + ".", 20107),
    ("expired", lambda s: signed(s, nbf=later(-600), exp=later(-5)), 20104),
    ("lifetime over 24 h", lambda s: signed(s, exp=later(2 * 86400)), 20104),
    ("not yet valid", lambda s: signed(s, nbf=later(300)), 20105),
    ("wrong issuer", lambda s: signed(s, iss=generate().api_key_sid), 20103),
    ("wrong subject", lambda s: signed(s, sub=generate().account_sid), 20103),
    ("alg HS512", lambda s: signed(s, header={**good_header(), "alg": "HS512"}, digest=hashlib.sha512), 20102),
    ("alg none", lambda s: signed(s, header={**good_header(), "alg": "none"}, digest=None), 20102),
    ("header without cty", lambda s: signed(s, header={"typ": "JWT", "alg": "HS256"}), 20102),
    ("header not an object", lambda s: signed(s, header=["HS256"]), 20102),  # type: ignore[arg-type]
    ("no video grant", lambda s: signed(s, grants={"identity": "mallory"}), 20106),
    ("no identity", lambda s: signed(s, grants={"video": {}}), 20106),
    ("grant for another room", lambda s: s.token("mallory", room="elsewhere"), 20106),
    ("garbage", lambda s: "garbage", 20101),
    ("three garbage segments", lambda s: "a.b.c", 20101),
    ("not a string", lambda s: 12345, 20101),
    ("missing", lambda s: None, 20101),
    ("identity with a control character", lambda s: signed(s, grants={"identity": "a\nb", "video": {}}), 53200),
]


@pytest.mark.parametrize("make_token, code", [(make, code) for _, make, code in REFUSALS], ids=[label for label, _, _ in REFUSALS])
async def test_refused_token_gets_its_code_and_the_socket_closes(server: Server, make_token: Callable[[Server], Any], code: int) -> None:
    raw = await RawSocket.open(server)
    try:
        message = connect_message("", tracks=[{"id": "v1", "kind": "video"}])
        token = make_token(server)
        if token is None:
            del message["token"]
        else:
            message["token"] = token
        await raw.send(message)
        # Exactly one message, the error, then the server closes: no `connected`, no offer.
        messages = await raw.rest()
        assert [m["type"] for m in messages] == ["error"], messages
        assert messages[0]["code"] == code, messages[0]
        assert messages[0]["request"] == "connect"
        assert raw.ws.closed
    finally:
        await raw.close()
    assert server.registry.rooms == {}, "a refused connect must not create a room"


@pytest.mark.parametrize(
    "make_token, code",
    [
        (lambda s: signed(s, grants={"identity": "alice", "video": {}}, exp=later(-5)), 20104),
        (lambda s: s.token("alice", room="elsewhere"), 20106),
        (lambda s: s.token("mallory"), 53002),
    ],
    ids=["expired", "grant for another room", "another identity"],
)
async def test_refused_sync_closes_and_leaves_the_session_alone(
    server: Server, clients: Clients, make_token: Callable[[Server], str], code: int
) -> None:
    alice = await clients.join("alice", publish="")
    events = EventLog(alice)
    raw = await RawSocket.open(server)
    try:
        await raw.send({"type": "sync", "version": 1, "token": make_token(server), "session": alice.session})
        messages = await raw.rest()
        assert [(m["type"], m.get("code")) for m in messages] == [("error", code)]
    finally:
        await raw.close()
    # The session still belongs to alice's own socket.
    assert await alice.set_subscribe_rules([{"type": "include", "kind": "audio"}])
    assert events.events == [] and alice.state == "connected"


async def test_client_connect_raises_the_refusal_code(server: Server) -> None:
    with pytest.raises(SignalingError) as info:
        await connect(server.url, signed(server, nbf=later(300)), name="room")
    assert info.value.code == 20105
    assert server.registry.rooms == {}


@pytest.mark.parametrize("room_grant", ["helper-room", None], ids=["room grant", "any room"])
async def test_official_helper_tokens_are_accepted(server: Server, clients: Clients, room_grant: str | None) -> None:
    c = server.credentials
    tokens = {}
    for identity in ("alice", "bob"):
        helper = AccessToken(c.account_sid, c.api_key_sid, c.api_key_secret, identity=identity, ttl=600)
        helper.add_grant(VideoGrant(room=room_grant))
        tokens[identity] = helper.to_jwt()
    alice = await clients.join("alice", "helper-room", publish="v", token=tokens["alice"])
    bob = await clients.join("bob", "helper-room", publish="", token=tokens["bob"])
    assert alice.sid == bob.sid and alice.name == "helper-room"
    assert bob.local_participant.identity == "bob"
    await subscribed_media(bob, "alice", "cam")
