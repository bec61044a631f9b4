"""Per-codec knowledge the forwarder needs: where a keyframe starts, and codec identity."""

from __future__ import annotations

from collections.abc import Callable

from . import h264, vp8

KeyframeProbe = Callable[[bytes], bool]

_PROBES: dict[str, KeyframeProbe] = {
    "video/vp8": vp8.is_keyframe_start,
    "video/h264": h264.is_keyframe_start,
}


def keyframe_probe(mime_type: str) -> KeyframeProbe | None:
    return _PROBES.get(mime_type.lower())


def codec_key(mime_type: str, parameters: dict[str, object]) -> tuple[str, ...]:
    """What makes two codec descriptions interchangeable for forwarding."""
    mime = mime_type.lower()
    if mime == "video/h264":
        return (
            mime,
            str(parameters.get("packetization-mode", "0")),
            str(parameters.get("profile-level-id", "42001f")).lower()[:4],
        )
    return (mime,)
