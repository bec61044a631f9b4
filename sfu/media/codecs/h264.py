"""H.264 RTP payload (RFC 6184, packetization-mode 1): where a keyframe starts."""

_IDR = 5
_SPS = 7
_STAP_A = 24
_FU_A = 28


def is_keyframe_start(payload: bytes) -> bool:
    """True for a packet that begins an IDR access unit (SPS, IDR, or FU-A start of IDR)."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_IDR, _SPS):
        return True
    if nal_type == _STAP_A:
        i = 1
        while i + 2 < len(payload):
            size = (payload[i] << 8) | payload[i + 1]
            if size == 0:
                return False
            if payload[i + 2] & 0x1F in (_IDR, _SPS):
                return True
            i += 2 + size
        return False
    if nal_type == _FU_A and len(payload) >= 2:
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in (_IDR, _SPS)
    return False
