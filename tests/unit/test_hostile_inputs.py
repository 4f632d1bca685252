"""
Inputs no honest client sends, in memory: numbers that are not ASCII digits
or have thousands of them, and control characters in text.  Each gets a 400
that says what to fix, and nothing is stored.
"""

from __future__ import annotations

import os

import pytest

from .harness import FORM_TYPE, Service, fieldsFor, form

BLOB = os.urandom(100)
LONG = "9" * 5000


@pytest.mark.parametrize("name", ["limit", "page"])
@pytest.mark.parametrize("value", ["%B2", "%C2%B2", "%D9%A3", LONG])
def test_listCountsAreASCIIDigitsOnly(service: Service, name: str, value: str) -> None:
    reply = service.request("GET", f"/data?{name}={value}")
    assert reply.code == 400
    assert reply.error.startswith(f"{name} must be a non-negative integer, not ")


def test_aPageBeyondWhatTheDatabaseCountsIs400(service: Service) -> None:
    reply = service.request("GET", "/data?page=9999999999999999999")
    assert (reply.code, reply.error) == (400, "page must be at most 9223372036854775")


@pytest.mark.parametrize(
    "cursor", ["%C2%B2.1", "1.%C2%B2", f"1.{LONG}", f"{LONG}.1", "1.99999999999999999999"]
)
def test_aCursorOfOtherDigitsIs400(service: Service, cursor: str) -> None:
    reply = service.request("GET", f"/data?cursor={cursor}")
    assert (reply.code, reply.error) == (
        400,
        "cursor is not one this service gave; follow the list's next",
    )


@pytest.mark.parametrize("size", ["²", "٣", LONG[:255], "99999999999999999999"])
def test_aSizeOfOtherDigitsIs400(service: Service, size: str) -> None:
    reply = service.request(
        "POST", "/data", form({"size": size}, BLOB), {"Content-Type": FORM_TYPE}
    )
    assert reply.code == 400
    assert "is not a non-negative integer number of bytes" in reply.error
    service.assertNothingLeft()


@pytest.mark.parametrize(
    "spec", [f"bytes=0-{LONG}", f"bytes={LONG}-", f"bytes=-{LONG}", "bytes=٣-٤"]
)
def test_aRangeOfOtherDigitsIsIgnored(service: Service, spec: str) -> None:
    """RFC 9110: a Range that cannot be read is ignored; the whole blob is served."""
    uuid = service.stored("data", BLOB)["uuid"]
    reply = service.request("GET", f"/data/{uuid}/blob", headers={"Range": spec})
    assert (reply.code, reply.body) == (200, BLOB)


@pytest.mark.parametrize("character", ["\x00", "\x1b", "\x7f", "\n", "\t", "\x85"])
@pytest.mark.parametrize("field", ["name", "description"])
def test_aControlCharacterInATextFieldIs400NamingIt(
    service: Service, character: str, field: str
) -> None:
    fields = fieldsFor("problem", BLOB, **{field: f"bad{character}name"})
    reply = service.request("POST", "/problem", form(fields, BLOB), {"Content-Type": FORM_TYPE})
    assert reply.code == 400
    assert reply.error == (
        f"field {field!r} holds the control character U+{ord(character):04X}:"
        " text must be printable"
    )
    service.assertNothingLeft()


@pytest.mark.parametrize("part", [{"filename": "a\x00.bin"}, {"type": "text/plain\x00x"}])
def test_aControlCharacterInTheBlobPartIs400(service: Service, part: dict[str, str]) -> None:
    body = form(fieldsFor("data", BLOB), BLOB, **part)
    reply = service.request("POST", "/data", body, {"Content-Type": FORM_TYPE})
    assert reply.code == 400
    assert reply.error.startswith("the blob's ")
    assert "control character U+0000" in reply.error
    service.assertNothingLeft()


def test_aControlCharacterInANameFilterIs400(service: Service) -> None:
    reply = service.request("GET", "/algo?name=a%00b")
    assert (reply.code, reply.error) == (
        400,
        "parameter 'name' holds the control character U+0000: text must be printable",
    )


def test_printableTextBeyondASCIIIsFine(service: Service) -> None:
    stored = service.stored("problem", BLOB, name="modèle ✓", description="données « ok »")
    assert (stored["name"], stored["description"]) == ("modèle ✓", "données « ok »")
