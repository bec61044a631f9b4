"""How loud an audio source is, from the RFC 6464 levels its packets carry (no decoding).

The Producer counts, per packet, one byte of the ``ssrc-audio-level`` header extension
(its value is -dBov: 0 loudest, 127 silence): how many packets came, how many were voice
(at or above ``-ACTIVE_DBOV`` dBov) and their summed values. A few times a second the media
plane turns those counts into a window level (``window_level``) and smooths it per source
(``AudioLevelMeter``), as mediasoup's AudioLevelObserver and LiveKit's audio level do, and
reports the smoothed level when it changed meaningfully (``TransportListener.on_audio_activity``).
Who the dominant speaker is, the room model decides (``sfu.speakers``).
"""

from __future__ import annotations

ACTIVE_DBOV = 50  # a packet at -50 dBov or louder counts as voice (LiveKit uses 35 for speech)
MIN_ACTIVE_SHARE = 0.3  # a window with fewer voice packets than this share is silent (clicks)
RISE = 0.6  # smoothing: how far the level moves toward a louder window...
FALL = 0.3  # ...and toward a quieter one (a short pause between words keeps the level)
REPORT_STEP = 0.05  # report a change of at least this much (and every fall to silence)
FLOOR = 0.02  # a smoothed level under this is silence


def window_level(packets: int, active: int, active_dbov: int) -> float:
    """One window's level, 0.0 to 1.0: the voice packets' mean loudness on a dB scale
    (``1 - dBov/127``) times their share of the window; 0.0 when voice is under
    ``MIN_ACTIVE_SHARE`` of the packets (or none came)."""
    if packets <= 0 or active <= 0 or active < packets * MIN_ACTIVE_SHARE:
        return 0.0
    loudness = 1.0 - (active_dbov / active) / 127.0
    return max(0.0, min(1.0, loudness * active / packets))


class AudioLevelMeter:
    """One source's smoothed level, and the value last reported."""

    __slots__ = ("level", "reported")

    def __init__(self) -> None:
        self.level = 0.0
        self.reported = 0.0

    def update(self, window: float) -> float | None:
        """Fold in one window's level; return the new smoothed level when it should be
        reported (a change of ``REPORT_STEP`` or more, or a fall to silence), else None."""
        level = self.level
        level += (window - level) * (RISE if window > level else FALL)
        if level < FLOOR:
            level = 0.0
        self.level = level
        if abs(level - self.reported) >= REPORT_STEP or (level == 0.0 and self.reported != 0.0):
            self.reported = level
            return round(level, 3)
        return None
