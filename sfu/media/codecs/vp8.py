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


def descriptor_fields(payload: bytes) -> tuple[int, int, int]:
    """Where the picture ID and TL0PICIDX sit in a payload descriptor: (picture ID offset,
    its width in bits: 15, 7 or 0 when absent, TL0PICIDX offset or -1)."""
    if len(payload) < 2 or not payload[0] & 0x80:
        return -1, 0, -1
    x = payload[1]
    i = 2
    pid_at, pid_bits, tl0_at = -1, 0, -1
    if x & 0x80:  # I
        if len(payload) <= i:
            return -1, 0, -1
        pid_at = i
        pid_bits = 15 if payload[i] & 0x80 else 7
        i += 2 if pid_bits == 15 else 1
    if x & 0x40 and len(payload) > i:  # L
        tl0_at = i
    if pid_at >= 0 and pid_bits == 15 and len(payload) <= pid_at + 1:
        return -1, 0, tl0_at
    return pid_at, pid_bits, tl0_at


def read_picture_ids(payload: bytes) -> tuple[int | None, int | None]:
    """(picture ID, TL0PICIDX) of a packet, each None when absent."""
    pid_at, bits, tl0_at = descriptor_fields(payload)
    pid = None
    if bits == 15:
        pid = ((payload[pid_at] & 0x7F) << 8) | payload[pid_at + 1]
    elif bits == 7:
        pid = payload[pid_at] & 0x7F
    return pid, (payload[tl0_at] if tl0_at >= 0 else None)


def rewrite_picture_ids(payload: bytes, pid_offset: int, tl0_offset: int) -> tuple[bytes, int | None, int | None]:
    """The payload with its picture ID and TL0PICIDX moved by the offsets (modulo their
    widths), in place in a copy: no decoding. Returns (payload, new picture ID, new TL0PICIDX)."""
    pid_at, bits, tl0_at = descriptor_fields(payload)
    if bits == 0 and tl0_at < 0:
        return payload, None, None
    out = bytearray(payload)
    pid = tl0 = None
    if bits == 15:
        pid = (((out[pid_at] & 0x7F) << 8) + out[pid_at + 1] + pid_offset) & 0x7FFF
        out[pid_at] = 0x80 | (pid >> 8)
        out[pid_at + 1] = pid & 0xFF
    elif bits == 7:
        pid = (out[pid_at] + pid_offset) & 0x7F
        out[pid_at] = pid
    if tl0_at >= 0:
        tl0 = out[tl0_at] = (out[tl0_at] + tl0_offset) & 0xFF
    return bytes(out), pid, tl0


def keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from the frame header of a keyframe's first packet (RFC 6386 9.1)."""
    _, bits, _ = descriptor_fields(payload)
    i = 1
    if payload and payload[0] & 0x80 and len(payload) > 1:
        i = 2 + {15: 2, 7: 1}.get(bits, 0)
        if payload[1] & 0x40:  # L
            i += 1
        if payload[1] & 0x30:  # T or K
            i += 1
    header = payload[i : i + 10]
    if len(header) < 10 or header[0] & 0x01 or header[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(header[6:8], "little") & 0x3FFF
    height = int.from_bytes(header[8:10], "little") & 0x3FFF
    return width, height
