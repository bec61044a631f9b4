"""Test media (see signaling.sources)."""

from signaling.sources import BITS, CounterVideoTrack, ToneAudioTrack, draw_counter, read_counter

__all__ = ["BITS", "CounterVideoTrack", "ToneAudioTrack", "draw_counter", "read_counter"]
