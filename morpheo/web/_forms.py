# -*- test-case-name: tests.unit.test_forms -*-
"""
What each kind's upload form holds, and the rules for its fields.

Pure functions and values: no I/O, so the rules are tested on their own and
used alike by the multipart and the raw (model) uploads.
"""

from __future__ import annotations

import re
import uuid as _uuid

from attrs import frozen

from .._errors import APIError

MAX_FIELD = 255
BLOB = "blob"


@frozen
class FormSpec:
    """The text fields a form may carry before C{blob}, and which it must."""

    required: frozenset[str]
    optional: frozenset[str]
    blobRequired: bool = True

    @property
    def allowed(self) -> frozenset[str]:
        return self.required | self.optional


#: Every upload may state its blob's sha256 (hex) before the blob.
_OPTIONAL = frozenset({"uuid", "sha256"})

UPLOAD_FORMS: dict[str, FormSpec] = {
    "algo": FormSpec(frozenset({"name", "size"}), _OPTIONAL),
    "data": FormSpec(frozenset({"size"}), _OPTIONAL),
    "prediction": FormSpec(frozenset({"size"}), _OPTIONAL),
    "problem": FormSpec(frozenset({"name", "description", "size"}), _OPTIONAL),
}

#: PATCH /problem/{uuid}: every field optional, the blob too.
PATCH_FORM = FormSpec(frozenset(), _OPTIONAL | {"name", "description", "size"}, blobRequired=False)


_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)


def parseUUID(value: str, what: str = "uuid") -> str:
    """
    The canonical form of a uuid, or a 400 that says what was wrong.  Only
    hex digits and dashes: L{uuid.UUID} alone would take signs, spaces and
    underscores and quietly store a uuid the client never sent.
    """
    if not _UUID.fullmatch(value):
        raise APIError(400, f"{what} {value[:80]!r} is not a valid uuid (e.g. {_uuid.uuid4()})")
    return str(_uuid.UUID(value))


#: The largest count the database holds (a bigint): sizes, offsets, cursors.
MAX_COUNT = 2**63 - 1

_DIGITS = re.compile(r"[0-9]{1,19}")


def asciiCount(value: str) -> int | None:
    """
    C{value} as a non-negative integer of at most 19 ASCII digits, or
    L{None}: C{str.isdigit} would take "²" and other digits C{int} refuses
    or reads differently, and a thousand digits would reach C{int}'s limit.
    """
    return int(value) if _DIGITS.fullmatch(value) else None


def parseSize(value: str) -> int:
    size = asciiCount(value)
    if size is None or size > MAX_COUNT:
        raise APIError(400, f"size {value[:80]!r} is not a non-negative integer number of bytes")
    return size


def checkText(what: str, value: str) -> None:
    """Refuse a control character (NUL, escapes...) in a text a client stores or sends."""
    for character in value:
        if ord(character) < 0x20 or 0x7F <= ord(character) < 0xA0:
            raise APIError(
                400,
                f"{what} holds the control character U+{ord(character):04X}:"
                " text must be printable",
            )


def checkFieldName(spec: FormSpec, name: str, seen: dict[str, str]) -> None:
    """Refuse a field as soon as its name is known."""
    if name == BLOB:
        return
    if name not in spec.allowed:
        allowed = ", ".join(sorted(spec.allowed | {BLOB}))
        raise APIError(400, f"unknown field {name[:80]!r}: this form takes {allowed}")
    if name in seen:
        raise APIError(400, f"field {name!r} is given twice")


def checkFieldLength(name: str, length: int) -> None:
    if length > MAX_FIELD:
        raise APIError(400, f"field {name!r} is longer than {MAX_FIELD} characters")


def checkBeforeBlob(spec: FormSpec, fields: dict[str, str], hasBlob: bool) -> None:
    """
    Once the text fields are in (the blob starts, or the form ends): refuse
    what is missing or malformed before any blob byte is stored.
    """
    missing = sorted(spec.required - fields.keys())
    if missing:
        where = " before blob (text fields come first)" if hasBlob else ""
        raise APIError(400, f"missing required field {', '.join(missing)}{where}")
    if spec.blobRequired and not hasBlob:
        raise APIError(400, "missing required field blob (the file, sent last)")
    for needsBlob in ("size", "sha256"):
        if needsBlob in fields and not hasBlob:
            raise APIError(400, f"{needsBlob} is given but no blob follows it")
    if hasBlob and "size" not in fields:
        raise APIError(400, "missing required field size before blob (text fields come first)")
    for name, value in fields.items():
        checkFieldLength(name, len(value))
        checkText(f"field {name!r}", value)
    if "uuid" in fields:
        fields["uuid"] = parseUUID(fields["uuid"])
    if "size" in fields:
        parseSize(fields["size"])
