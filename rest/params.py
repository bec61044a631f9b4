"""Request parameters by Twilio's names: form bodies and query strings, strictly typed.

Every read either returns a value of the right type (``None`` when absent) or raises a 400
``RestError`` naming the parameter; unknown names and repeated scalars are refused up front,
so a handler validates everything before it changes anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from sfu.errors import INVALID_PARAMETER

from .errors import RestError, invalid

MAX_BODY = 64 * 1024
FORM = "application/x-www-form-urlencoded"
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")


class Params:
    """The parameters of one request; ``allowed`` lists the names the operation takes."""

    def __init__(self, pairs: Iterable[tuple[str, str]], allowed: Collection[str], repeatable: Collection[str] = ()) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            if name not in allowed:
                raise invalid(f"Unknown parameter: {name}")
            self._values.setdefault(name, []).append(value)
        for name, values in self._values.items():
            if len(values) > 1 and name not in repeatable:
                raise invalid(f"Parameter {name} was given more than once")

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for name, values in self._values.items() for value in values]

    def text(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[0] if values else None

    def texts(self, name: str) -> list[str]:
        return list(self._values.get(name, []))

    def integer(self, name: str, low: int, high: int, code: int = INVALID_PARAMETER) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        if not _INTEGER.fullmatch(raw) or not low <= int(raw) <= high:
            raise invalid(f"{name} must be an integer from {low} to {high}", code)
        return int(raw)

    def boolean(self, name: str) -> bool | None:
        raw = self.text(name)
        if raw is None:
            return None
        if raw.lower() not in ("true", "false"):
            raise invalid(f"{name} must be true or false")
        return raw.lower() == "true"

    def choice(self, name: str, choices: Collection[str], code: int = INVALID_PARAMETER) -> str | None:
        raw = self.text(name)
        if raw is not None and raw not in choices:
            raise invalid(f"{name} must be one of {', '.join(sorted(choices))}", code)
        return raw

    def json(self, name: str, code: int = INVALID_PARAMETER) -> Any:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise invalid(f"{name} is not valid JSON", code) from None

    def timestamp(self, name: str) -> datetime | None:
        """An ISO 8601 date or date-time; one without a zone is UTC."""
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = datetime.fromisoformat(raw)
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value.astimezone(timezone.utc)
        except (ValueError, OverflowError):
            raise invalid(f"{name} must be an ISO 8601 date-time") from None


def query(request: web.Request, allowed: Collection[str]) -> Params:
    return Params(request.rel_url.query.items(), allowed)


async def form(request: web.Request, allowed: Collection[str], repeatable: Collection[str] = ()) -> Params:
    """The urlencoded body (at most MAX_BODY bytes of UTF-8)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise RestError(413, INVALID_PARAMETER, f"Request body is larger than {MAX_BODY} bytes")
    body = bytearray()
    while len(body) <= MAX_BODY:
        chunk = await request.content.read(MAX_BODY + 1 - len(body))
        if not chunk:
            break
        body += chunk
    if len(body) > MAX_BODY:
        raise RestError(413, INVALID_PARAMETER, f"Request body is larger than {MAX_BODY} bytes")
    if body and request.content_type != FORM:
        raise RestError(415, INVALID_PARAMETER, f"Request body must be {FORM}")
    try:
        text = bytes(body).decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=1000, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise invalid("Request body is not valid urlencoded UTF-8") from None
    return Params(pairs, allowed, repeatable)
