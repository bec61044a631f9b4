"""Our offers, rewritten onto the payload types and header-extension ids the participant chose.

The SDK offers first, so its browser numbers everything: Chrome's VP8 is 96, its audio level
extension 1. aiortc numbers its own offers from fixed tables (its VP8 is 97, its mid
extension 1). In one BUNDLE a payload type or an extension id must mean one thing across
every m-section and every renegotiation: Chrome refuses an offer that reassigns either. So
each offer we send is rewritten onto the participant's numbering (codecs it never offered
are left out), and aiortc adopts the numbers of the answer as it does for any answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CodecKey = tuple[str, str, int, str, str]  # kind, name, clock rate and channels, H264 profile, packetization mode

_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?")
_FMTP = re.compile(r"^a=fmtp:(\d+) (.*)$")
_EXTMAP = re.compile(r"^a=extmap:(\d+)(/\S+)? (\S+)(.*)$")
_PT_LINE = re.compile(r"^a=(rtpmap|fmtp|rtcp-fb):(\d+|\*)( .*)?$")


@dataclass
class _Section:
    kind: str
    lines: list[str]
    codecs: dict[int, CodecKey] = field(default_factory=dict)
    apt: dict[int, int] = field(default_factory=dict)  # rtx payload type -> its codec's


def _sections(sdp: str) -> tuple[list[str], list[_Section]]:
    session: list[str] = []
    sections: list[_Section] = []
    for line in sdp.split("\r\n"):
        if not line:
            continue
        if line.startswith("m="):
            sections.append(_Section(line[2:].split(" ", 1)[0], [line]))
        elif sections:
            sections[-1].lines.append(line)
        else:
            session.append(line)
    for section in sections:
        names: dict[int, tuple[str, int, str]] = {}
        params: dict[int, dict[str, str]] = {}
        for line in section.lines:
            if m := _RTPMAP.match(line):
                names[int(m.group(1))] = (m.group(2).lower(), int(m.group(3)), m.group(4) or "")
            elif m := _FMTP.match(line):
                params[int(m.group(1))] = dict(p.strip().partition("=")[::2] for p in m.group(2).split(";"))
        for pt, (name, clock, channels) in names.items():
            fmtp = params.get(pt, {})
            if name == "rtx":
                if fmtp.get("apt", "").isdigit():
                    section.apt[pt] = int(fmtp["apt"])
                continue
            profile = fmtp.get("profile-level-id", "").lower() if name == "h264" else ""
            mode = fmtp.get("packetization-mode", "0") if name == "h264" else ""
            section.codecs[pt] = (section.kind, name, clock * 10 + (int(channels) if channels else 0), profile, mode)
    return session, sections


@dataclass
class Numbering:
    """The participant's payload types (per codec, and RTX per codec) and extension ids,
    learnt from its offers; the first assignment of each stays."""

    codecs: dict[CodecKey, int] = field(default_factory=dict)
    rtx: dict[int, int] = field(default_factory=dict)  # codec payload type -> its RTX's
    extensions: dict[str, int] = field(default_factory=dict)  # URI -> id

    def learn(self, sdp: str) -> None:
        for section in _sections(sdp)[1]:
            if section.kind not in ("audio", "video"):
                continue
            for pt, key in section.codecs.items():
                self.codecs.setdefault(key, pt)
            for rtx, base in section.apt.items():
                self.rtx.setdefault(base, rtx)
            for line in section.lines:
                if m := _EXTMAP.match(line):
                    self.extensions.setdefault(m.group(3), int(m.group(1)))

    def align(self, sdp: str) -> str:
        """``sdp`` (one of our offers) in the participant's numbering."""
        if not self.codecs:
            return sdp
        session, sections = _sections(sdp)
        out = list(session)
        for section in sections:
            out += self._align_section(section) if section.kind in ("audio", "video") else section.lines
        return "\r\n".join(out) + "\r\n"

    def _align_section(self, section: _Section) -> list[str]:
        mapping: dict[int, int] = {}
        for pt, key in section.codecs.items():
            theirs = self.codecs.get(key)
            if theirs is not None and theirs not in mapping.values():
                mapping[pt] = theirs
        for rtx, base in section.apt.items():
            theirs = self.rtx.get(mapping.get(base, -1))
            if theirs is not None and theirs not in mapping.values():
                mapping[rtx] = theirs
        if not any(pt in section.codecs for pt in mapping):
            return section.lines  # nothing in common: leave it for the answer to reject
        m_line = section.lines[0].split(" ")
        lines = [" ".join(m_line[:3] + [str(mapping[int(pt)]) for pt in m_line[3:] if pt.isdigit() and int(pt) in mapping])]
        for line in section.lines[1:]:
            if m := _PT_LINE.match(line):
                if m.group(2) == "*":
                    lines.append(line)
                elif int(m.group(2)) in mapping:
                    rest = m.group(3) or ""
                    if m.group(1) == "fmtp":
                        rest = re.sub(r"apt=(\d+)", lambda a: f"apt={mapping.get(int(a.group(1)), a.group(1))}", rest)
                    lines.append(f"a={m.group(1)}:{mapping[int(m.group(2))]}{rest}")
            elif m := _EXTMAP.match(line):
                theirs = self.extensions.get(m.group(3))
                if theirs is not None:
                    lines.append(f"a=extmap:{theirs}{m.group(2) or ''} {m.group(3)}{m.group(4)}")
            else:
                lines.append(line)
        return lines
