"""The ICE servers handed to participants in ``connected`` (our Network Traversal Service).

Twilio's SDK asks its signaling server for ICE servers (``ice`` -> ``iced``) unless the app
passes ``iceServers``; here the server puts them in ``connected`` / ``synced`` as
``ice_servers``: the operator's ``--ice-server`` list, STUN and TURN, in the W3C
RTCIceServer shape (``{urls, username?, credential?}``) the browser takes verbatim.

TURN credentials are given only to participants that presented a valid token (``connected``
is the answer to an accepted ``connect``), and are never logged. With a shared secret
(coturn's ``use-auth-secret`` / ``static-auth-secret``, the "TURN REST API"), each
participant gets its own time-limited credential for the TURN entries given without one
(rather than one fixed password for everyone): username
``<expiry unix time>:<identity>``, credential ``base64(HMAC-SHA1(secret, username))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCIceServer

DEFAULT_TURN_TTL = 24 * 3600  # seconds a minted TURN credential stays valid


def turn_rest_credential(secret: str, identity: str, expires: int) -> tuple[str, str]:
    """coturn's ``use-auth-secret`` credential for ``identity``, valid until ``expires``
    (unix time): ``(username, password)``."""
    username = f"{expires}:{identity}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def describe(server: RTCIceServer) -> dict[str, Any]:
    """One RTCIceServer as the JSON a browser's RTCConfiguration takes."""
    out: dict[str, Any] = {"urls": server.urls}
    if server.username is not None:
        out["username"] = server.username
    if server.credential is not None:
        out["credential"] = server.credential
    return out


def parse(entries: object) -> list[RTCIceServer]:
    """The ``ice_servers`` of a server message as aiortc RTCIceServers (client side); entries
    that are not ``{urls: str | [str], username?: str, credential?: str}`` are skipped."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        urls, username, credential = entry.get("urls"), entry.get("username"), entry.get("credential")
        if not (isinstance(urls, str) or (isinstance(urls, list) and urls and all(isinstance(u, str) for u in urls))):
            continue
        if not isinstance(username, (str, type(None))) or not isinstance(credential, (str, type(None))):
            continue
        out.append(RTCIceServer(urls=urls, username=username, credential=credential))
    return out


def _is_turn(url: str) -> bool:
    return url.startswith(("turn:", "turns:"))


@dataclass
class IceServers:
    """What each participant is handed: ``servers`` as given, except that with
    ``turn_secret`` a TURN entry without a username gets a credential minted for that
    participant, valid ``turn_ttl`` seconds (``sfu serve --ice-server turn:HOST:PORT
    --turn-secret SECRET``)."""

    servers: list[RTCIceServer] = field(default_factory=list, repr=False)  # (their credentials)
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl: int = DEFAULT_TURN_TTL
    clock: Callable[[], float] = time.time

    def needs_secret(self, server: RTCIceServer) -> bool:
        """A TURN entry with no credential of its own (the shared secret mints them)."""
        urls = [server.urls] if isinstance(server.urls, str) else list(server.urls)
        return server.username is None and any(_is_turn(str(u)) for u in urls)

    def for_participant(self, identity: str) -> list[dict[str, Any]]:
        """The ``ice_servers`` of ``identity``'s ``connected`` / ``synced`` message."""
        out = []
        for server in self.servers:
            entry = describe(server)
            if self.turn_secret and self.needs_secret(server):
                expires = int(self.clock()) + self.turn_ttl
                entry["username"], entry["credential"] = turn_rest_credential(self.turn_secret, identity, expires)
            out.append(entry)
        return out
