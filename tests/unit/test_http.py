"""
The pure HTTP helpers: range parsing, validators, digests, disposition.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from morpheo._errors import APIError
from morpheo.web._http import (
    MAX_RANGES,
    ByteRange,
    Unsatisfiable,
    contentDisposition,
    httpDate,
    ifRangeHolds,
    match,
    noneMatch,
    parseContentMD5,
    parseHTTPDate,
    parseRange,
    parseReprDigest,
    reprDigest,
)


@pytest.mark.parametrize(
    "header,expected",
    [
        ("bytes=0-0", [ByteRange(0, 1)]),
        ("bytes=10-19", [ByteRange(10, 10)]),
        ("bytes=90-", [ByteRange(90, 10)]),
        ("bytes=-5", [ByteRange(95, 5)]),
        ("bytes=-500", [ByteRange(0, 100)]),
        ("bytes=95-200", [ByteRange(95, 5)]),
        ("bytes=0-1, 5-6,-1", [ByteRange(0, 2), ByteRange(5, 2), ByteRange(99, 1)]),
        ("bytes=200-300, 0-0", [ByteRange(0, 1)]),
        ("BYTES=1-1", [ByteRange(1, 1)]),
    ],
)
def test_parseRange(header, expected):
    assert parseRange(header, 100) == expected


@pytest.mark.parametrize(
    "header", ["items=0-1", "bytes=", "bytes=5-1", "bytes=a-b", "bytes=-", "0-1"]
)
def test_parseRangeIgnoresWhatItCannotRead(header):
    """RFC 9110: a Range header that cannot be parsed is ignored (200)."""
    assert parseRange(header, 100) is None


@pytest.mark.parametrize(
    "header", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=150-160,100-"]
)
def test_parseRangeUnsatisfiable(header):
    with pytest.raises(Unsatisfiable):
        parseRange(header, 100)


def test_parseRangeOfEmptyBlob():
    with pytest.raises(Unsatisfiable):
        parseRange("bytes=0-", 0)


def test_upToSixteenRangesAreServed():
    """More than sixteen (once merged): the header is ignored, the whole blob served."""
    sixteen = [ByteRange(2 * i, 1) for i in range(MAX_RANGES)]
    assert MAX_RANGES == 16
    assert parseRange("bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(16)), 1000) == sixteen
    assert parseRange("bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(17)), 1000) is None


@pytest.mark.parametrize(
    "header,expected",
    [
        ("bytes=" + ",".join(["0-"] * 100), [ByteRange(0, 100)]),
        ("bytes=50-59,0-9,5-14", [ByteRange(0, 15), ByteRange(50, 10)]),
        ("bytes=5-9,0-4", [ByteRange(0, 10)]),
        ("bytes=-10,80-", [ByteRange(80, 20)]),
        ("bytes=" + ",".join(f"{i}-{i}" for i in range(100)), [ByteRange(0, 100)]),
    ],
)
def test_overlappingOrTouchingRangesAreMerged(header, expected):
    """No byte is sent twice: overlapping or touching ranges become one, in order."""
    assert parseRange(header, 100) == expected


def test_contentRange():
    assert ByteRange(10, 5).contentRange(100) == "bytes 10-14/100"


def test_validators():
    etag = '"abc"'
    assert not noneMatch('"abc"', etag)
    assert not noneMatch('W/"abc"', etag)
    assert not noneMatch("*", etag)
    assert noneMatch('"x", "y"', etag)
    assert match('"x", "abc"', etag)
    assert match("*", etag)
    assert not match('W/"abc"', etag)
    assert not match('"x"', etag)


def test_ifRange():
    assert ifRangeHolds('"abc"', '"abc"', 0)
    assert not ifRangeHolds('"abd"', '"abc"', 0)
    assert not ifRangeHolds('W/"abc"', '"abc"', 0)
    assert ifRangeHolds(httpDate(1764046800), '"abc"', 1764046800)
    assert not ifRangeHolds(httpDate(1764046801), '"abc"', 1764046800)
    assert not ifRangeHolds("not a date", '"abc"', 1764046800)


def test_httpDateRoundTrip():
    assert httpDate(1764046800) == "Tue, 25 Nov 2025 05:00:00 GMT"
    assert parseHTTPDate(httpDate(1764046800)) == 1764046800
    assert parseHTTPDate("garbage") is None


def test_reprDigest():
    sha = hashlib.sha256(b"hello").hexdigest()
    header = reprDigest(sha)
    assert (
        header == "sha-256=:" + base64.b64encode(hashlib.sha256(b"hello").digest()).decode() + ":"
    )
    assert parseReprDigest(header) == {"sha256": hashlib.sha256(b"hello").digest()}
    both = header + ", sha-512=:" + base64.b64encode(hashlib.sha512(b"x").digest()).decode() + ":"
    assert set(parseReprDigest(both)) == {"sha256", "sha512"}
    assert parseReprDigest("unixsum=:AAA=:") == {}


@pytest.mark.parametrize("header", ["sha-256", "sha-256=abc", "sha-256=:!!!:"])
def test_reprDigestRefused(header):
    with pytest.raises(APIError) as e:
        parseReprDigest(header)
    assert e.value.code == 400


def test_contentMD5():
    digest = hashlib.md5(b"x").digest()
    assert parseContentMD5(base64.b64encode(digest).decode()) == digest
    with pytest.raises(APIError):
        parseContentMD5(base64.b64encode(b"short").decode())


def test_contentDisposition():
    assert contentDisposition("model.tar.gz") == 'attachment; filename="model.tar.gz"'
    header = contentDisposition('données "v2".tgz')
    assert header.startswith('attachment; filename="donn_es _v2_.tgz"')
    assert "filename*=UTF-8''donn%C3%A9es%20%22v2%22.tgz" in header
