"""Twilio subscribe-rule semantics and validation (error 53215)."""

from __future__ import annotations

import pytest

from sfu.rules import DEFAULT_RULES, InvalidRules, TrackRef, subscribes, validate

CAM = TrackRef("MT" + "1" * 32, "cam", "video", "PA" + "a" * 32, "alice")
MIC = TrackRef("MT" + "2" * 32, "mic", "audio", "PA" + "a" * 32, "alice")
BOB_CAM = TrackRef("MT" + "3" * 32, "cam", "video", "PA" + "b" * 32, "bob")


def test_default_subscribes_to_everything() -> None:
    assert all(subscribes(DEFAULT_RULES, t) for t in (CAM, MIC, BOB_CAM))


@pytest.mark.parametrize(
    "rules, expected",
    [
        ([{"type": "include", "kind": "audio"}], {"mic"}),
        ([{"type": "include", "all": True}, {"type": "exclude", "kind": "video"}], {"mic"}),
        ([{"type": "include", "publisher": "bob"}], {"bob-cam"}),
        ([{"type": "include", "publisher": "PA" + "a" * 32, "kind": "video"}], {"cam"}),
        ([{"type": "include", "track": "cam"}], {"cam", "bob-cam"}),
        ([{"type": "include", "track": "MT" + "3" * 32}], {"bob-cam"}),
        ([{"type": "exclude", "all": True}], set()),
        ([{"type": "include", "all": True}, {"type": "exclude", "publisher": "alice"}], {"bob-cam"}),
    ],
)
def test_include_minus_exclude(rules, expected) -> None:
    names = {"cam": CAM, "mic": MIC, "bob-cam": BOB_CAM}
    assert {n for n, t in names.items() if subscribes(validate(rules), t)} == expected


@pytest.mark.parametrize(
    "rules",
    [
        [],
        "all",
        [{"all": True}],
        [{"type": "maybe", "all": True}],
        [{"type": "include", "all": False}],
        [{"type": "include", "all": True, "kind": "audio"}],
        [{"type": "include"}],
        [{"type": "include", "kind": "screen"}],
        [{"type": "include", "publisher": ""}],
        [{"type": "include", "colour": "red"}],
        [{"type": "include", "all": True}] * 21,
    ],
)
def test_invalid_rules_are_refused_with_53215(rules) -> None:
    with pytest.raises(InvalidRules) as info:
        validate(rules)
    assert info.value.code == 53215
