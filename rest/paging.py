"""Twilio's list paging: ``PageSize``, ``Page``, ``PageToken`` and the ``meta`` envelope.

Lists are newest first, ordered by (date_created, sid) descending. A page token names a
position in that order (keyset paging), so following ``next_page_url`` returns every record
exactly once even while records are being added: new ones sort before the first page.
``Page`` is the index the client reports, as in Twilio; the position is the token's.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from aiohttp import web
from yarl import URL

from sfu.store import PageKey

from .errors import invalid
from .params import Params

PAGING_PARAMS = ("PageSize", "Page", "PageToken")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_AFTER, _BEFORE = "PA", "PB"  # token prefixes: the page after / before a key
_SCAN = 1000  # records read at a time when walking back to a previous page


class Record(Protocol):
    @property
    def date_created(self) -> datetime: ...
    @property
    def sid(self) -> str: ...


R = TypeVar("R", bound=Record)
Fetch = Callable[[PageKey | None, int], Awaitable[Sequence[R]]]


@dataclass(frozen=True)
class PageRequest:
    size: int
    page: int
    token: str | None
    direction: str | None
    key: PageKey | None


def page_request(params: Params) -> PageRequest:
    size = params.integer("PageSize", 1, MAX_PAGE_SIZE)
    page = params.integer("Page", 0, 10**9)
    token = params.text("PageToken")
    direction, key = _decode(token) if token is not None else (None, None)
    return PageRequest(size or DEFAULT_PAGE_SIZE, page or 0, token, direction, key)


def key_of(record: Record) -> PageKey:
    return (record.date_created, record.sid)


def _encode(direction: str, key: PageKey) -> str:
    raw = json.dumps([key[0].isoformat(), key[1]], separators=(",", ":")).encode()
    return direction + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> tuple[str, PageKey]:
    try:
        direction, body = token[:2], token[2:]
        if direction not in (_AFTER, _BEFORE):
            raise ValueError(direction)
        created, sid = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not isinstance(sid, str):
            raise ValueError(token)
        return direction, (when, sid)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise invalid("PageToken is invalid") from None


async def _before(fetch: Fetch[R], key: PageKey, size: int) -> tuple[list[R], bool]:
    """The ``size`` records just before ``key`` in list order, and whether they are the first."""
    window: deque[R] = deque(maxlen=size)
    seen = 0
    cursor: PageKey | None = None
    while True:
        chunk = await fetch(cursor, _SCAN)
        for record in chunk:
            if key_of(record) <= key:
                return list(window), seen <= size
            window.append(record)
            seen += 1
        if len(chunk) < _SCAN:
            return list(window), seen <= size
        cursor = key_of(chunk[-1])


async def page_response(
    request: web.Request,
    base: str,
    request_page: PageRequest,
    fetch: Fetch[R],
    key: str,
    render: Callable[[R], dict[str, Any]],
    filters: Sequence[tuple[str, str]] = (),
) -> web.Response:
    """One page of ``fetch``'s records as Twilio's ``{key: [...], "meta": {...}}``."""
    size, page = request_page.size, request_page.page
    if request_page.direction == _BEFORE:
        assert request_page.key is not None
        records, first = await _before(fetch, request_page.key, size)
        more = True
    else:
        fetched = list(await fetch(request_page.key, size + 1))
        records, more = fetched[:size], len(fetched) > size
        first = request_page.key is None

    def url(page_index: int, token: str | None) -> str:
        query = [*filters, ("PageSize", str(size)), ("Page", str(page_index))]
        if token is not None:
            query.append(("PageToken", token))
        return str(URL(base).with_path(request.path).with_query(query))

    next_url = url(page + 1, _encode(_AFTER, key_of(records[-1]))) if more and records else None
    previous_url = url(max(page - 1, 0), _encode(_BEFORE, key_of(records[0]))) if not first and records else None
    meta = {
        "page": page,
        "page_size": size,
        "first_page_url": url(0, None),
        "previous_page_url": previous_url,
        "url": url(page, request_page.token),
        "next_page_url": next_url,
        "key": key,
    }
    return web.json_response({key: [render(r) for r in records], "meta": meta})


def memory_fetch(records: Sequence[R]) -> Fetch[R]:
    """A ``Fetch`` over records held in memory (live state), in list order."""
    ordered = sorted(records, key=key_of, reverse=True)

    async def fetch(after: PageKey | None, limit: int) -> Sequence[R]:
        start = [r for r in ordered if after is None or key_of(r) < after]
        return start[:limit]

    return fetch
