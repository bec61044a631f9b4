"""The dominant speaker rules (sfu.speakers) and the audio level meter (sfu.media.audiolevel),
with explicit times: no clock, no media."""

from __future__ import annotations

import pytest

from sfu import speakers
from sfu.media import audiolevel
from sfu.media.audiolevel import AudioLevelMeter, window_level
from sfu.speakers import SpeakerDetector

LOUD, SOFT, QUIET = 0.8, 0.5, 0.0


def test_the_first_speaker_becomes_dominant_after_speaking_a_moment() -> None:
    d = SpeakerDetector()
    assert not d.set_level("alice", LOUD, 10.0)
    assert d.dominant is None and d.due_at == pytest.approx(10.0 + speakers.FIRST_SPEAKER_TIME)
    assert not d.decide(10.1)
    assert d.decide(10.0 + speakers.FIRST_SPEAKER_TIME)
    assert d.dominant == "alice" and d.due_at is None


def test_a_short_burst_from_someone_else_does_not_take_over() -> None:
    d = SpeakerDetector()
    d.set_level("alice", LOUD, 0.0)
    d.decide(1.0)
    assert d.dominant == "alice"
    d.set_level("alice", QUIET, 2.0)
    d.set_level("bob", LOUD, 2.0)  # bob speaks for half a second: a cough, a "yes"
    assert not d.decide(2.5)
    d.set_level("bob", QUIET, 2.5)
    assert not d.decide(4.0) and d.dominant == "alice"  # alice keeps it while nobody else speaks


def test_another_participant_takes_over_after_speaking_long_enough() -> None:
    d = SpeakerDetector()
    d.set_level("alice", LOUD, 0.0)
    d.decide(1.0)
    d.set_level("alice", QUIET, 2.0)
    d.set_level("bob", SOFT, 2.0)
    assert d.due_at == pytest.approx(2.0 + speakers.MIN_SPEAKING_TIME)
    assert not d.decide(2.0 + speakers.MIN_SPEAKING_TIME - 0.01)
    assert d.decide(2.0 + speakers.MIN_SPEAKING_TIME)
    assert d.dominant == "bob"


def test_two_speaking_alike_do_not_flap_but_a_clearly_louder_one_wins() -> None:
    d = SpeakerDetector()
    d.set_level("alice", SOFT, 0.0)
    d.decide(1.0)
    d.set_level("bob", SOFT * 1.1, 1.0)  # louder, but within the margin
    assert not d.decide(5.0) and d.dominant == "alice" and d.due_at is None
    d.set_level("bob", LOUD, 5.0)  # now clearly louder than alice
    assert d.decide(5.0 + speakers.MIN_SPEAKING_TIME) and d.dominant == "bob"


def test_a_break_in_the_challengers_speech_restarts_its_time() -> None:
    d = SpeakerDetector()
    d.set_level("alice", LOUD, 0.0)
    d.decide(1.0)
    d.set_level("alice", QUIET, 1.0)
    d.set_level("bob", LOUD, 1.0)
    d.set_level("bob", QUIET, 1.5)
    d.set_level("bob", LOUD, 1.6)
    assert not d.decide(2.2)  # 1.2 s since bob first spoke, but only 0.6 s since he resumed
    assert d.decide(1.6 + speakers.MIN_SPEAKING_TIME) and d.dominant == "bob"


def test_speaking_has_hysteresis_and_the_dominant_speaker_leaving_clears_it() -> None:
    d = SpeakerDetector()
    d.set_level("alice", speakers.SPEAKING_LEVEL, 0.0)
    assert d.speaking == {"alice"}
    d.set_level("alice", (speakers.SPEAKING_LEVEL + speakers.SILENT_LEVEL) / 2, 0.1)
    assert d.speaking == {"alice"}  # between the two thresholds: still speaking
    d.set_level("alice", speakers.SILENT_LEVEL / 2, 0.2)
    assert d.speaking == set()
    d.set_level("alice", LOUD, 1.0)
    d.decide(2.0)
    assert d.dominant == "alice"
    assert d.remove("alice", 3.0)
    assert d.dominant is None and d.speaking == set()


def test_the_window_level_is_silence_without_enough_voice_packets() -> None:
    assert window_level(0, 0, 0) == 0.0
    assert window_level(50, 10, 100) == 0.0  # 20% voice: clicks, not speech
    loud = window_level(50, 50, 50 * 10)  # every packet at -10 dBov
    soft = window_level(50, 50, 50 * 45)
    assert 0.9 < loud <= 1.0 and 0.5 < soft < loud
    assert window_level(50, 25, 25 * 10) == pytest.approx(loud / 2)


def test_the_meter_rises_fast_falls_slower_and_reports_only_meaningful_changes() -> None:
    meter = AudioLevelMeter()
    reports = [meter.update(0.9) for _ in range(4)]
    assert reports[0] is not None and reports[0] >= 0.5
    assert reports[-1] is None  # settled: no new report
    falls = [meter.update(0.0) for _ in range(30)]
    levels = [r for r in falls if r is not None]
    assert levels[0] > 0.5  # one quiet window does not silence a speaker
    assert levels[-1] == 0.0 and meter.level == 0.0
    assert all(b < a for a, b in zip(levels, levels[1:]))
    assert audiolevel.REPORT_STEP > 0
