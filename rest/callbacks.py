"""Room status callbacks: Twilio's events, signed, in order per room, retried, never blocking.

Room and registry events only enqueue (``put_nowait``); one task per room sends its events
one after another with the room's ``StatusCallbackMethod``, signed with ``X-Twilio-Signature``
(base64 HMAC-SHA1 of the URL followed by every parameter name and value in name order, keyed
with the auth token). A failed delivery (connection error, timeout, 429 or 5xx) is retried
with exponential backoff; the room's later events wait behind it so the receiver sees them
in order. A 3xx answer is not a delivery (redirects are not followed) and, like a 4xx, is not
retried. At most 64 KiB of a response is read; the connection is dropped after that.

With ``public_only``, a callback URL whose host is or resolves to a loopback, link-local,
private or otherwise non-global address is refused (checked at delivery time, for every
address the name resolves to; the connection then goes to the addresses that were checked,
so a DNS answer that changes between the check and the connect cannot swap them).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from sfu.credentials import Credentials
from sfu.participant import Participant, PublishedTrack
from sfu.registry import RoomRegistry
from sfu.room import Room

logger = logging.getLogger(__name__)

Params = dict[str, str]

MAX_RESPONSE_BYTES = 64 * 1024  # of a callback's answer: what the receiver says is not needed


class CallbackRefused(OSError):
    """The callback URL points at an address ``public_only`` does not allow."""


def is_public_address(address: str) -> bool:
    """A globally routable unicast address (not loopback, link-local, private, shared,
    reserved, unspecified or multicast; IPv4-mapped IPv6 is judged as its IPv4 address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _check_public(host: str, addresses: list[str]) -> None:
    for address in addresses:
        if not is_public_address(address):
            raise CallbackRefused(f"{host} is {address}, not a public address")


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses the name if any address is not public. aiohttp
    connects to the addresses this returns, so the checked addresses are the ones used."""

    def __init__(self) -> None:
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        hosts = await self._resolver.resolve(host, port, family)
        _check_public(host, [h["host"] for h in hosts])
        return hosts

    async def close(self) -> None:
        await self._resolver.close()


async def _read_some(response: aiohttp.ClientResponse, limit: int = MAX_RESPONSE_BYTES) -> None:
    """Read at most ``limit`` bytes of the body; drop the connection if there is more."""
    left = limit
    while left > 0:
        chunk = await response.content.read(left)
        if not chunk:
            return
        left -= len(chunk)
    if not response.content.at_eof():
        response.close()


def signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """Twilio's request signature, as ``twilio.request_validator.RequestValidator`` checks it."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _timestamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class RoomCallbacks:
    """The ordered event stream of one room to its status callback URL."""

    def __init__(self, sender: "StatusCallbacks", room: Room, url: str, method: str) -> None:
        self.sender = sender
        self.room = room
        self.url = url
        self.method = method
        self.sequence = 0
        self.queue: asyncio.Queue[Params | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())
        handlers: dict[str, Any] = {
            "participant_connected": lambda p: self.participant_event("participant-connected", p),
            "participant_disconnected": lambda p: self.participant_event("participant-disconnected", p),
            "track_added": lambda p, t: self.track_event("track-added", p, t),
            "track_removed": lambda p, t: self.track_event("track-removed", p, t),
            "track_enabled": lambda p, t: self.track_event("track-enabled", p, t),
            "track_disabled": lambda p, t: self.track_event("track-disabled", p, t),
            "ended": self.room_ended,
        }
        for event, handler in handlers.items():
            room.on(event, handler)
        self.event("room-created")

    def event(self, name: str, **extra: str) -> None:
        room = self.room
        params: Params = {
            "AccountSid": self.sender.credentials.account_sid,
            "RoomName": room.unique_name,
            "RoomSid": room.sid,
            "RoomStatus": room.status,
            "RoomType": room.settings.type,
            "StatusCallbackEvent": name,
            "Timestamp": _timestamp(room.registry.now()),
            "SequenceNumber": str(self.sequence),
            **extra,
        }
        self.sequence += 1
        if self.queue.qsize() >= self.sender.max_queue:
            logger.warning("status callback queue of room %s is full: dropped %s", room.sid, name)
            return
        self.queue.put_nowait(params)

    def participant_event(self, name: str, p: Participant, **extra: str) -> None:
        if name == "participant-disconnected" and p.disconnected_at is not None:
            extra["ParticipantDuration"] = str(int((p.disconnected_at - p.connected_at).total_seconds()))
        self.event(name, ParticipantSid=p.sid, ParticipantStatus=p.status, ParticipantIdentity=p.identity, **extra)

    def track_event(self, name: str, p: Participant, track: PublishedTrack) -> None:
        self.participant_event(name, p, TrackSid=track.sid, TrackKind=track.kind, TrackName=track.name)

    def room_ended(self) -> None:
        self.event("room-ended", RoomDuration=str(self.room.duration or 0))
        self.queue.put_nowait(None)  # the last event: the sender stops after it

    async def _run(self) -> None:
        while True:
            params = await self.queue.get()
            if params is None:
                return
            await self.sender.deliver(self.url, self.method, params)


class StatusCallbacks:
    """Sends every room's events to its ``StatusCallback`` (or ``default_url`` for ad-hoc rooms)."""

    def __init__(
        self,
        registry: RoomRegistry,
        credentials: Credentials,
        default_url: str | None = None,
        default_method: str = "POST",
        attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        timeout: float = 10.0,
        max_queue: int = 10_000,
        public_only: bool = False,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.default_url = default_url
        self.default_method = default_method
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.max_queue = max_queue
        self.public_only = public_only
        self.rooms: dict[str, RoomCallbacks] = {}
        self._session: aiohttp.ClientSession | None = None
        registry.on("room_created", self._room_created)

    def _room_created(self, room: Room) -> None:
        url, method = room.settings.status_callback, room.settings.status_callback_method
        if url is None and not room.settings.created_via_rest:
            url, method = self.default_url, self.default_method
        if url is not None:
            stream = self.rooms[room.sid] = RoomCallbacks(self, room, url, method)
            stream.task.add_done_callback(lambda _: self.rooms.pop(room.sid, None))

    def _request(self, url: str, method: str, params: Params) -> tuple[str, dict[str, str], Params | None]:
        """The URL to call, its headers and its form body (None for GET)."""
        if method == "GET":
            target = str(URL(url).update_query(params))
            return target, {"X-Twilio-Signature": signature(self.credentials.auth_token, target, {})}, None
        return url, {"X-Twilio-Signature": signature(self.credentials.auth_token, url, params)}, params

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver(), use_dns_cache=False) if self.public_only else None
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False,  # the body is not used: never inflate what a receiver sends
            )
        return self._session

    def _refused(self, url: str) -> CallbackRefused | None:
        """With ``public_only``, an IP-literal host is checked here (aiohttp does not resolve
        those); a name is checked by PublicOnlyResolver at connect time."""
        if not self.public_only:
            return None
        host = (URL(url).host or "").strip("[]")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        try:
            _check_public(host, [host])
        except CallbackRefused as exc:
            return exc
        return None

    async def deliver(self, url: str, method: str, params: Params) -> bool:
        """Send one event, retrying with backoff; False if every attempt failed or the
        receiver refused it (4xx, or a 3xx: a redirect is not followed)."""
        target, headers, body = self._request(url, method, params)
        headers["User-Agent"] = "TwilioProxy/1.1"
        event = params["StatusCallbackEvent"]
        refused = self._refused(target)
        if refused is not None:
            logger.warning("status callback %s for %s refused: %s", event, params["RoomSid"], refused)
            return False
        session = self._client()
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            try:
                async with session.request(method, target, data=body, headers=headers, allow_redirects=False) as response:
                    await _read_some(response)
                    if response.status < 500 and response.status != 429:
                        if 300 <= response.status < 400:
                            logger.warning("status callback %s for %s answered HTTP %d: redirects are not followed, "
                                           "not delivered", event, params["RoomSid"], response.status)
                        elif response.status >= 400:
                            logger.warning("status callback %s for %s refused: HTTP %d", event, params["RoomSid"], response.status)
                        return response.status < 300
                    reason = f"HTTP {response.status}"
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, CallbackRefused):
                    logger.warning("status callback %s for %s refused: %s", event, params["RoomSid"], exc.os_error)
                    return False
                reason = type(exc).__name__
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                reason = type(exc).__name__
            logger.info("status callback %s for %s failed (%s), attempt %d", event, params["RoomSid"], reason, attempt + 1)
        logger.warning("status callback %s for %s dropped after %d attempts", event, params["RoomSid"], self.attempts)
        return False

    async def close(self, grace: float = 2.0) -> None:
        """Let queued events go out for up to ``grace`` seconds, then stop."""
        tasks = [stream.task for stream in self.rooms.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
