# -*- test-case-name: tests.unit.test_http -*-
"""
HTTP semantics of an object store, as pure functions: byte ranges
(RFC 9110 section 14), conditional requests (section 13), digests
(RFC 9530), content disposition (RFC 6266).  No I/O: the routes feed them
header values and act on the answers.
"""

from __future__ import annotations

import base64
import binascii
import re
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote

from attrs import frozen

from .._errors import APIError


@frozen
class ByteRange:
    """Bytes C{start} to C{start + length - 1} of a representation."""

    start: int
    length: int

    def contentRange(self, size: int) -> str:
        return f"bytes {self.start}-{self.start + self.length - 1}/{size}"


class Unsatisfiable(Exception):
    """No range of the request overlaps the representation: 416."""


#: A byte range: ASCII digits only, at most 19 of them (a bigint's).
_RANGE_SPEC = re.compile(r"\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*")

#: The most ranges one response serves, once overlapping ones are merged.
MAX_RANGES = 16


def parseRange(header: str, size: int, maxRanges: int = MAX_RANGES) -> list[ByteRange] | None:
    """
    The ranges a C{Range} header asks for, clipped to C{size}: in the
    order asked, unless some overlap or touch, when they are merged and
    given in ascending order (RFC 9110 lets a server coalesce them), so that
    no byte is sent twice.

    @return: L{None} when the header is to be ignored, for the whole
        representation to be served: not bytes, malformed (RFC 9110), or
        more than C{maxRanges} ranges even once merged.
    @raise Unsatisfiable: when no range overlaps the representation.
    """
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs:
        return None
    ranges: list[ByteRange] = []
    for spec in specs.split(","):
        m = _RANGE_SPEC.fullmatch(spec)
        if not m or m.group(1) == m.group(2) == "":
            return None
        first, last = m.group(1), m.group(2)
        if first == "":
            suffix = int(last)
            if suffix == 0:
                continue
            start = max(0, size - suffix)
            end = size - 1
        else:
            start = int(first)
            end = size - 1 if last == "" else min(int(last), size - 1)
            if last != "" and int(last) < start:
                return None
            if start >= size:
                continue
        if end >= start:
            ranges.append(ByteRange(start, end - start + 1))
    if not ranges:
        raise Unsatisfiable()
    ranges = _coalesced(ranges)
    if len(ranges) > maxRanges:
        return None
    return ranges


def _coalesced(ranges: list[ByteRange]) -> list[ByteRange]:
    """C{ranges} as asked if none overlap or touch; else merged, ascending."""
    ordered = sorted(ranges, key=lambda r: r.start)
    merged: list[ByteRange] = []
    for r in ordered:
        if merged and r.start <= merged[-1].start + merged[-1].length:
            last = merged[-1]
            end = max(last.start + last.length, r.start + r.length)
            merged[-1] = ByteRange(last.start, end - last.start)
        else:
            merged.append(r)
    return ranges if len(merged) == len(ranges) else merged


def etagOf(sha256: str) -> str:
    """A strong ETag: the blob's sha256 names its bytes exactly."""
    return f'"{sha256}"'


def _etags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def _strip(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def noneMatch(header: str, etag: str) -> bool:
    """C{If-None-Match} is true (the request goes on) unless a tag matches
    (weak comparison)."""
    tags = _etags(header)
    return not ("*" in tags or any(_strip(t) == _strip(etag) for t in tags))


def match(header: str, etag: str) -> bool:
    """C{If-Match} is true if a tag matches (strong comparison)."""
    tags = _etags(header)
    return "*" in tags or any(t == etag for t in tags if not t.startswith("W/"))


def httpDate(timestamp: int) -> str:
    return formatdate(timestamp, usegmt=True)


def parseHTTPDate(value: str) -> int | None:
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError):
        return None


def ifRangeHolds(header: str, etag: str, lastModified: int) -> bool:
    """C{If-Range}: ranges are served only if the representation is the one
    the client has (a strong ETag, or the exact date)."""
    header = header.strip()
    if header.startswith('"') or header.startswith("W/"):
        return header == etag
    date = parseHTTPDate(header)
    return date is not None and date == lastModified


def contentDisposition(filename: str) -> str:
    """C{attachment} with the file name, ASCII-safe and UTF-8 (RFC 6266)."""
    ascii = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    header = f'attachment; filename="{ascii}"'
    if ascii != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header


# Digests (RFC 9530 Repr-Digest, RFC 1864 Content-MD5)

#: Digest algorithms the service can check, by their RFC 9530 names.
DIGESTS = {"sha-256": "sha256", "sha-512": "sha512"}


def parseReprDigest(header: str) -> dict[str, bytes]:
    """
    The digests a C{Repr-Digest} header states, by hashlib name; algorithms
    the service does not know are ignored, as RFC 9530 allows.
    """
    out: dict[str, bytes] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise APIError(400, f"Repr-Digest {item.strip()[:80]!r} is not name=:base64:")
        algorithm = DIGESTS.get(name.strip().lower())
        value = value.strip()
        if algorithm is None:
            continue
        if not (value.startswith(":") and value.endswith(":") and len(value) >= 2):
            raise APIError(400, f"Repr-Digest {name} must be a byte sequence, :base64:")
        out[algorithm] = _b64(value[1:-1], f"Repr-Digest {name}")
    return out


def parseContentMD5(header: str) -> bytes:
    digest = _b64(header.strip(), "Content-MD5")
    if len(digest) != 16:
        raise APIError(400, "Content-MD5 must be the base64 of a 16-byte MD5 digest")
    return digest


def parseSHA256Field(value: str) -> bytes:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise APIError(400, "the sha256 field must be 64 hexadecimal digits")
    return bytes.fromhex(value)


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{what} is not valid base64") from None


def reprDigest(sha256hex: str) -> str:
    """The C{Repr-Digest} of a blob, from its hex sha256."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256hex)).decode()}:"
