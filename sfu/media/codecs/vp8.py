"""VP8 RTP payload descriptor (RFC 7741): where a keyframe starts."""


def is_keyframe_start(payload: bytes) -> bool:
    """True for the first packet of a VP8 keyframe (S=1, partition 0, P bit clear)."""
    if len(payload) < 1:
        return False
    b0 = payload[0]
    if not b0 & 0x10 or b0 & 0x07:  # S bit, PID == 0
        return False
    i = 1
    if b0 & 0x80:  # X: extended control bits
        if len(payload) < 2:
            return False
        x = payload[1]
        i = 2
        if x & 0x80:  # I: PictureID
            if len(payload) <= i:
                return False
            i += 2 if payload[i] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            i += 1
        if x & 0x30:  # T or K: TID/KEYIDX
            i += 1
    return len(payload) > i and not payload[i] & 0x01
