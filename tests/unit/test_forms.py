"""
The field rules of the upload forms (L{morpheo.web._forms}), on their own.

These rules decide the 400s of the contract before any blob byte is stored,
for the multipart and the raw uploads alike; being pure functions, they are
tested here directly, quickly, and without a server.
"""

from __future__ import annotations

import pytest

from morpheo._errors import APIError
from morpheo.web._forms import (
    MAX_FIELD,
    PATCH_FORM,
    UPLOAD_FORMS,
    checkBeforeBlob,
    checkFieldLength,
    checkFieldName,
    parseSize,
    parseUUID,
)

CANONICAL = "1f01d777-c3f4-4bdd-9c4a-8388860e4c5e"


def _refused(excinfo: pytest.ExceptionInfo[APIError], *words: str) -> None:
    """A refusal is a 400 whose message names what was wrong."""
    assert excinfo.value.code == 400
    for word in words:
        assert word in excinfo.value.message


# parseUUID


@pytest.mark.parametrize(
    "value",
    [
        CANONICAL,
        CANONICAL.upper(),
        CANONICAL.replace("-", ""),
        CANONICAL.replace("-", "").upper(),
    ],
)
def test_parseUUIDCanonicalises(value: str) -> None:
    """
    One resource has one uuid whatever its spelling: every accepted form
    comes back lower case with dashes, so lookups and the 409 on a taken
    uuid do not depend on how the client wrote it.
    """
    assert parseUUID(value) == CANONICAL


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-uuid",
        CANONICAL[:-1],
        CANONICAL + "0",
        CANONICAL.replace("e", "g"),
        "x" * 500,
    ],
)
def test_parseUUIDRefusesMalformed(value: str) -> None:
    """A malformed uuid is the client's mistake: a 400 that quotes it."""
    with pytest.raises(APIError) as excinfo:
        parseUUID(value)
    _refused(excinfo, "not a valid uuid", repr(value[:80]))


@pytest.mark.parametrize(
    "value",
    [
        "+" + CANONICAL[1:],
        " " + CANONICAL[1:],
        CANONICAL[:4] + "_" + CANONICAL[5:],
        "\u0663" + CANONICAL[1:],
    ],
    ids=["plus-sign", "leading-space", "underscore", "arabic-indic-digit"],
)
def test_parseUUIDRefusesWhatIntAccepts(value: str) -> None:
    """
    32 characters that C{int(value, 16)} happens to accept (a sign, a space,
    an underscore, a non-ASCII digit) are not a uuid: accepting them would
    store the resource under a uuid the client never sent (C{"+f01d..."}
    would become C{"0f01d..."}).
    """
    with pytest.raises(APIError) as excinfo:
        parseUUID(value)
    _refused(excinfo, "not a valid uuid")


def test_parseUUIDNamesTheField() -> None:
    """The message says which field held the bad uuid (e.g. the model's algo)."""
    with pytest.raises(APIError) as excinfo:
        parseUUID("nope", what="algo")
    _refused(excinfo, "algo 'nope'")


# parseSize


@pytest.mark.parametrize("value, expected", [("0", 0), ("1", 1), ("5368709120", 5368709120)])
def test_parseSizeAcceptsNonNegativeIntegers(value: str, expected: int) -> None:
    """C{size} is the blob's exact length in bytes, zero included."""
    assert parseSize(value) == expected


@pytest.mark.parametrize(
    "value",
    ["-1", "+1", "1.5", "1e3", "abc", "", " 3", "3 ", "0x10", "1_000", "\u0663", "\u00b2"],
)
def test_parseSizeRefusesAnythingElse(value: str) -> None:
    """
    Only ASCII digits make a size: C{int()} would also take a sign, spaces,
    underscores and other scripts' digits, which the contract calls a 400.
    """
    with pytest.raises(APIError) as excinfo:
        parseSize(value)
    _refused(excinfo, "not a non-negative integer")


# checkFieldName


def test_checkFieldNameAcceptsTheFormsFields() -> None:
    """Every field of the contract's table is accepted for its kind, blob too,
    and the optional sha256 a client may state for its blob."""
    table = {
        "algo": {"uuid", "name", "size", "sha256", "blob"},
        "data": {"uuid", "size", "sha256", "blob"},
        "prediction": {"uuid", "size", "sha256", "blob"},
        "problem": {"uuid", "name", "description", "size", "sha256", "blob"},
    }
    assert set(UPLOAD_FORMS) == set(table)
    for kind, names in table.items():
        assert UPLOAD_FORMS[kind].allowed | {"blob"} == names
        for name in names:
            checkFieldName(UPLOAD_FORMS[kind], name, {})


@pytest.mark.parametrize("kind, name", [("data", "name"), ("algo", "description"), ("algo", "x")])
def test_checkFieldNameRefusesUnknown(kind: str, name: str) -> None:
    """An unknown field is refused as soon as its name is read, listing what is allowed."""
    with pytest.raises(APIError) as excinfo:
        checkFieldName(UPLOAD_FORMS[kind], name, {})
    _refused(excinfo, "unknown field", repr(name), "blob")


def test_checkFieldNameRefusesDuplicate() -> None:
    """A field given twice is ambiguous: refused rather than picking one."""
    with pytest.raises(APIError) as excinfo:
        checkFieldName(UPLOAD_FORMS["algo"], "name", {"name": "first"})
    _refused(excinfo, "'name'", "twice")


# checkFieldLength


def test_checkFieldLengthLimit() -> None:
    """255 characters fit (the column's limit); 256 are a 400 naming the field."""
    assert MAX_FIELD == 255
    checkFieldLength("name", 255)
    with pytest.raises(APIError) as excinfo:
        checkFieldLength("name", 256)
    _refused(excinfo, "'name'", "255")


# checkBeforeBlob


def test_checkBeforeBlobAcceptsACompleteForm() -> None:
    """A form with its required fields and a blob passes, unchanged but for the uuid."""
    fields = {"name": "n", "description": "d", "size": "3"}
    checkBeforeBlob(UPLOAD_FORMS["problem"], fields, hasBlob=True)
    assert fields == {"name": "n", "description": "d", "size": "3"}


def test_checkBeforeBlobMissingRequired() -> None:
    """
    A required field missing when the blob starts is refused before any blob
    byte is stored, and the message tells the client that text comes first.
    """
    with pytest.raises(APIError) as excinfo:
        checkBeforeBlob(UPLOAD_FORMS["problem"], {"size": "3", "name": "n"}, hasBlob=True)
    _refused(excinfo, "missing required field description", "before blob")


def test_checkBeforeBlobBlobRequired() -> None:
    """An upload form that ends without its blob is refused."""
    with pytest.raises(APIError) as excinfo:
        checkBeforeBlob(UPLOAD_FORMS["data"], {"size": "3"}, hasBlob=False)
    _refused(excinfo, "blob")


def test_checkBeforeBlobSizeWithoutBlob() -> None:
    """A PATCH that announces a size but sends no blob is contradictory."""
    with pytest.raises(APIError) as excinfo:
        checkBeforeBlob(PATCH_FORM, {"size": "3"}, hasBlob=False)
    _refused(excinfo, "size", "no blob")


def test_checkBeforeBlobBlobWithoutSize() -> None:
    """
    A PATCH blob needs its size first: the exact length is what lets the
    server refuse a short or long body.
    """
    with pytest.raises(APIError) as excinfo:
        checkBeforeBlob(PATCH_FORM, {"name": "n"}, hasBlob=True)
    _refused(excinfo, "size")


def test_checkBeforeBlobPatchNeedsNothing() -> None:
    """Every PATCH field is optional: an empty PATCH form is not an error here."""
    checkBeforeBlob(PATCH_FORM, {}, hasBlob=False)


def test_checkBeforeBlobCanonicalisesUUID() -> None:
    """The uuid field is rewritten in its canonical form, so it is stored as such."""
    fields = {"uuid": CANONICAL.upper(), "size": "1"}
    checkBeforeBlob(UPLOAD_FORMS["data"], fields, hasBlob=True)
    assert fields["uuid"] == CANONICAL


def test_checkBeforeBlobRefusesBadUUIDAndSize() -> None:
    """A bad uuid or size is found before the blob, not after it is stored."""
    with pytest.raises(APIError) as excinfo:
        checkBeforeBlob(UPLOAD_FORMS["data"], {"uuid": "nope", "size": "1"}, hasBlob=True)
    _refused(excinfo, "not a valid uuid")
    with pytest.raises(APIError) as excinfo:
        checkBeforeBlob(UPLOAD_FORMS["data"], {"size": "-1"}, hasBlob=True)
    _refused(excinfo, "not a non-negative integer")


def test_checkBeforeBlobRefusesLongField() -> None:
    """A field longer than 255 characters is refused with the others' rules."""
    with pytest.raises(APIError) as excinfo:
        checkBeforeBlob(UPLOAD_FORMS["algo"], {"name": "n" * 256, "size": "1"}, hasBlob=True)
    _refused(excinfo, "'name'", "longer than 255")
