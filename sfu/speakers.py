"""Who is speaking in a room, and who the dominant speaker is (pure: no clock, no I/O).

The media plane reports each audio source's smoothed level (0.0 to 1.0, from RFC 6464
levels: ``TransportListener.on_audio_activity``); the room keeps each participant's loudest
track's level here. The rules, with hysteresis so the answer does not flap (as Jitsi's
DominantSpeakerIdentification and LiveKit's speaker detection do):
- a participant is *speaking* from ``SPEAKING_LEVEL`` up, and stops under ``SILENT_LEVEL``;
- the first speaker becomes dominant after ``FIRST_SPEAKER_TIME`` of speaking;
- another participant takes over only after being the loudest speaker, and louder than the
  dominant one by ``MARGIN`` times, for ``MIN_SPEAKING_TIME`` without a break;
- a dominant speaker who falls silent stays dominant until someone else takes over, or
  leaves (then nobody is, until someone speaks).
"""

from __future__ import annotations

SPEAKING_LEVEL = 0.2
SILENT_LEVEL = 0.1
FIRST_SPEAKER_TIME = 0.3  # seconds
MIN_SPEAKING_TIME = 1.0  # seconds
MARGIN = 1.25


class SpeakerDetector:
    """Levels by participant SID in, ``dominant`` and ``speaking`` out.

    ``set_level``, ``remove`` and ``decide`` return True when ``dominant`` changed;
    ``due_at`` is when ``decide`` should run again if no level changes before then."""

    def __init__(self) -> None:
        self.levels: dict[str, float] = {}
        self.speaking: set[str] = set()
        self.dominant: str | None = None
        self._challenger: str | None = None
        self._since = 0.0

    def set_level(self, sid: str, level: float, now: float) -> bool:
        self.levels[sid] = level
        if level >= SPEAKING_LEVEL:
            self.speaking.add(sid)
        elif level < SILENT_LEVEL:
            self.speaking.discard(sid)
        return self.decide(now)

    def remove(self, sid: str, now: float) -> bool:
        self.levels.pop(sid, None)
        self.speaking.discard(sid)
        changed = False
        if self.dominant == sid:
            self.dominant = None
            changed = True
        if self._challenger == sid:
            self._challenger = None
        return self.decide(now) or changed

    def _loudest(self) -> str | None:
        best: str | None = None
        for sid in self.speaking:
            if best is None or self.levels[sid] > self.levels[best]:
                best = sid
        return best

    def decide(self, now: float) -> bool:
        loudest = self._loudest()
        current = self.dominant
        if loudest is None or loudest == current:
            self._challenger = None
            return False
        if current is not None and current in self.speaking and self.levels[loudest] < self.levels[current] * MARGIN:
            self._challenger = None  # both speak, neither clearly louder: keep the dominant one
            return False
        if self._challenger != loudest:
            self._challenger, self._since = loudest, now
        if now - self._since >= self._hold():
            self.dominant, self._challenger = loudest, None
            return True
        return False

    def _hold(self) -> float:
        return FIRST_SPEAKER_TIME if self.dominant is None else MIN_SPEAKING_TIME

    @property
    def due_at(self) -> float | None:
        return None if self._challenger is None else self._since + self._hold()
