"""Twilio subscribe rules: which published tracks a participant receives.

A rule is ``{"type": "include"|"exclude", ...filters}`` where the filters are ``all``
(true, alone), ``publisher`` (identity or participant SID), ``track`` (name or track
SID) and ``kind`` (audio, video, data); the filters of one rule must all match; a rule
may also carry ``priority`` (high, standard or low: the subscription's priority when the
media plane must shed video under overload, see ``priority``). A track
is subscribed when some include rule matches it and no exclude rule does. The default,
``[{"type": "include", "all": true}]``, subscribes to everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import INVALID_SUBSCRIBE_RULES

MAX_RULES = 20
KINDS = ("audio", "video", "data")
FILTERS = ("all", "publisher", "track", "kind", "priority")
DEFAULT_RULES: list[dict[str, Any]] = [{"type": "include", "all": True}]
PRIORITIES = ("high", "standard", "low")
MAX_FILTER_LENGTH = 256  # a publisher identity (at most 256 characters) or a track name or SID


class InvalidRules(ValueError):
    """Twilio error 53215: the rule set is not valid."""

    code = INVALID_SUBSCRIBE_RULES


@dataclass(frozen=True, slots=True)
class TrackRef:
    """What a rule can match a published track on."""

    track_sid: str
    track_name: str
    kind: str
    publisher_sid: str
    publisher_identity: str


def validate(rules: object) -> list[dict[str, Any]]:
    """Return a normalised copy of ``rules`` or raise InvalidRules with the reason."""
    if not isinstance(rules, list) or not rules:
        raise InvalidRules("Rules must be a non-empty list")
    if len(rules) > MAX_RULES:
        raise InvalidRules(f"At most {MAX_RULES} rules are allowed")
    normalised = []
    for rule in rules:
        if not isinstance(rule, Mapping):
            raise InvalidRules("Each rule must be an object")
        if rule.get("type") not in ("include", "exclude"):
            raise InvalidRules("Each rule needs a type of include or exclude")
        unknown = set(rule) - {"type", *FILTERS}
        if unknown:
            raise InvalidRules(f"Unknown rule field(s): {', '.join(sorted(unknown))}")
        if "all" in rule:
            if rule["all"] is not True or set(rule) - {"type", "all"}:
                raise InvalidRules("A rule with 'all' must have all=true and no other filter")
        elif not set(rule) & {"publisher", "track", "kind"}:
            raise InvalidRules("A rule needs at least one of all, publisher, track or kind")
        if "kind" in rule and rule["kind"] not in KINDS:
            raise InvalidRules("kind must be one of audio, video or data")
        if "priority" in rule and rule["priority"] not in PRIORITIES:
            raise InvalidRules("priority must be one of high, standard or low")
        for key in ("publisher", "track"):
            if key in rule and (not isinstance(rule[key], str) or not rule[key]):
                raise InvalidRules(f"{key} must be a non-empty string")
            if key in rule and len(rule[key]) > MAX_FILTER_LENGTH:
                raise InvalidRules(f"{key} must be at most {MAX_FILTER_LENGTH} characters")
        normalised.append({k: rule[k] for k in ("type", *FILTERS) if k in rule})
    return normalised


def _matches(rule: Mapping[str, Any], track: TrackRef) -> bool:
    if rule.get("all"):
        return True
    if "publisher" in rule and rule["publisher"] not in (track.publisher_sid, track.publisher_identity):
        return False
    if "track" in rule and rule["track"] not in (track.track_sid, track.track_name):
        return False
    if "kind" in rule and rule["kind"] != track.kind:
        return False
    return True


def subscribes(rules: Iterable[Mapping[str, Any]], track: TrackRef) -> bool:
    included = excluded = False
    for rule in rules:
        if _matches(rule, track):
            if rule["type"] == "include":
                included = True
            else:
                excluded = True
    return included and not excluded


def priority(rules: Iterable[Mapping[str, Any]], track: TrackRef) -> str:
    """The priority the subscriber gave ``track``: that of the last matching include rule
    carrying one, else ``standard``."""
    found = "standard"
    for rule in rules:
        if rule["type"] == "include" and "priority" in rule and _matches(rule, track):
            found = rule["priority"]
    return found
