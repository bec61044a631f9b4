"""Twilio-style resource identifiers: a two-letter prefix and 32 lowercase hex digits."""

from __future__ import annotations

import re
import secrets

ROOM = "RM"
PARTICIPANT = "PA"
TRACK = "MT"
RECORDING = "RT"
COMPOSITION = "CJ"

_SID = re.compile(r"^[A-Z]{2}[0-9a-f]{32}$")


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def is_sid(value: object, prefix: str | None = None) -> bool:
    if not isinstance(value, str) or not _SID.match(value):
        return False
    return prefix is None or value.startswith(prefix)
