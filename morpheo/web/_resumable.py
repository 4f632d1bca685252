# -*- test-case-name: tests.unit.test_resumable,tests.integration.test_resumable -*-
"""
The resumable uploads' HTTP side, at C{/uploads} and C{/uploads/{id}}:
tus 1.0.0 (with its extensions creation, creation-with-upload,
creation-defer-length, termination, checksum, expiration and
concatenation) and the IETF draft "Resumable Uploads for HTTP"
(draft-ietf-httpbis-resumable-upload, interop version 8), told apart by
their headers (C{Tus-Resumable}, C{Upload-Draft-Interop-Version}).

Parsing the protocols' headers is pure functions, apart from any I/O;
L{UploadsAPI} decodes a request with them, calls the domain layer
(L{morpheo.objects.Resumable}) and encodes its answer.  Errors are the
domain's typed outcomes, turned into statuses by the routes in one place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen
from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest

from .._errors import APIError, OffsetMismatch
from .._kinds import KINDS, TABLE
from .._types import Concat, Label, StoredObject, Upload
from ..objects import Chunk, NewUpload, Progress, Resumable
from ._forms import checkText, parseUUID
from ._http import parseSHA256Field, reprDigest
from ._mount import mounted
from ._streaming import IStreamingRequest, RequestBody
from ._upload import RawSource

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,termination,checksum,"
    "expiration,concatenation"
)
#: The interop version of the IETF draft this implements (its text says
#: which: "The current interop version is 8").
INTEROP_VERSION = 8
#: The Upload-Checksum algorithms, by their tus names: hashlib's names.
CHECKSUMS = {"sha1": "sha1", "sha256": "sha256", "md5": "md5"}
#: The header that names the resource an upload becomes.
RESOURCE_HEADER = b"Morpheo-Resource"
TUS_CONTENT_TYPE = "application/offset+octet-stream"
IETF_CONTENT_TYPE = "application/partial-upload"

#: What Upload-Metadata may carry: the resource's fields.
METADATA_KEYS = frozenset(
    {"kind", "uuid", "name", "description", "algo", "filename", "content-type", "sha256"}
)
#: What tus clients commonly call one of those fields: tus-js-client's
#: documentation sends the file's media type as C{filetype}.
METADATA_ALIASES = {"filetype": "content-type"}
_METADATA_KEY = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_INTEGER = re.compile(r"[0-9]{1,15}")
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


class Protocol(Enum):
    """Which protocol a request speaks."""

    TUS = "tus"
    IETF = "ietf"


# Pure parsing


def parseMetadata(header: str) -> dict[str, str]:
    """
    tus C{Upload-Metadata}: comma-separated pairs of a key and the base64
    of its value (or a key alone, for an empty value); keys unique.
    """
    out: dict[str, str] = {}
    if not header.strip():
        return out
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not _METADATA_KEY.fullmatch(parts[0]):
            raise APIError(
                400,
                "Upload-Metadata must be comma-separated pairs of a key and the base64 of"
                f" its value, not {pair.strip()[:80]!r}",
            )
        key = parts[0]
        if key in out:
            raise APIError(400, f"Upload-Metadata gives {key!r} twice")
        value = ""
        if len(parts) == 2:
            try:
                value = base64.b64decode(parts[1], validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise APIError(
                    400, f"the Upload-Metadata value of {key!r} is not the base64 of UTF-8 text"
                ) from None
        checkText(f"the Upload-Metadata value of {key!r}", value)
        out[key] = value
    return out


def encodeMetadata(metadata: Mapping[str, str]) -> str:
    """tus C{Upload-Metadata} for C{metadata}."""
    return ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in metadata.items()
    )


def parseCount(value: str, name: str) -> int:
    """An offset or a length: a non-negative integer (tus), an sf-integer
    (the draft: at most 15 digits)."""
    value = value.strip()
    if not _INTEGER.fullmatch(value):
        raise APIError(400, f"{name} must be a non-negative integer, not {value[:40]!r}")
    return int(value)


def parseBoolean(value: str) -> bool | None:
    """An RFC 8941 Boolean (C{?1}, C{?0}, parameters ignored); L{None} for
    anything else, which the draft says to ignore."""
    item = value.split(";", 1)[0].strip()
    return {"?1": True, "?0": False}.get(item)


def parseChecksum(value: str) -> tuple[str, bytes]:
    """tus C{Upload-Checksum}: an algorithm and the base64 of the chunk's digest."""
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise APIError(
            400,
            f"Upload-Checksum algorithm {algorithm[:40]!r} is not supported:"
            f" one of {', '.join(CHECKSUMS)}",
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the Upload-Checksum digest is not valid base64") from None
    name = CHECKSUMS[algorithm]
    if len(digest) != hashlib.new(name).digest_size:
        raise APIError(400, f"the Upload-Checksum digest is not a {algorithm} digest")
    return name, digest


def uploadIdOf(reference: str) -> str:
    """The id of an upload named by its URL or its path (C{/uploads/{id}})."""
    path = urlsplit(reference.strip()).path.rstrip("/")
    head, _, uploadId = path.rpartition("/")
    if not head.endswith("/uploads") or not _UPLOAD_ID.fullmatch(uploadId):
        raise APIError(400, f"{reference.strip()[:80]!r} is not an upload of this service")
    return uploadId


def parseConcat(value: str) -> tuple[Concat, list[str]]:
    """tus C{Upload-Concat}: C{partial}, or C{final;} and the parts' URLs."""
    value = value.strip()
    if value == "partial":
        return Concat.PARTIAL, []
    kind, _, refs = value.partition(";")
    if kind.strip() != "final" or not refs.strip():
        raise APIError(
            400, "Upload-Concat must be partial, or final;/uploads/{id} /uploads/{id}..."
        )
    return Concat.FINAL, [uploadIdOf(ref) for ref in refs.split()]


def parseInterop(value: str) -> int:
    version = parseCount(value, "Upload-Draft-Interop-Version")
    if version != INTEROP_VERSION:
        raise APIError(
            400,
            f"this service speaks interop version {INTEROP_VERSION} of the resumable upload"
            f" draft, not {version}",
        )
    return version


def newUploadOf(
    metadata: Mapping[str, str], length: int | None, concat: Concat = Concat.NONE
) -> NewUpload:
    """
    The upload C{Upload-Metadata} describes, held to the rules of a plain
    upload of its kind: its kind (required, but for a partial upload),
    its text fields (all those of its kind), a model's algo, a valid uuid.
    """
    given = metadata
    metadata = _unaliased(metadata)
    unknown = sorted(set(metadata) - METADATA_KEYS)
    if unknown:
        raise APIError(
            400,
            f"unknown Upload-Metadata key {unknown[0]!r}: keys are"
            f" {', '.join(sorted(METADATA_KEYS | set(METADATA_ALIASES)))}",
        )
    label = Label(metadata.get("content-type") or None, metadata.get("filename") or None)
    sha256 = metadata.get("sha256")
    if sha256 is not None:
        sha256 = parseSHA256Field(sha256).hex()
    if concat is Concat.PARTIAL:
        return NewUpload(None, length, metadata=given, concat=concat)
    kindName = metadata.get("kind")
    if kindName is None:
        raise APIError(400, "Upload-Metadata must give the kind of the resource (kind)")
    if kindName not in TABLE:
        raise APIError(400, f"unknown kind {kindName[:80]!r}: one of {', '.join(KINDS)}")
    kind = TABLE[kindName]
    allowed = {"kind", "uuid", "filename", "content-type", "sha256", *kind.text}
    if kind.parent is not None:
        allowed.add(kind.parent)
    extra = sorted(set(metadata) - allowed)
    if extra:
        raise APIError(400, f"a {kindName} has no field {extra[0]!r}")
    missing = [name for name in kind.text if not metadata.get(name)]
    if missing:
        raise APIError(400, f"missing required field {missing[0]} (in Upload-Metadata)")
    parent = None
    if kind.parent is not None:
        if not metadata.get(kind.parent):
            raise APIError(400, f"missing required field {kind.parent} (in Upload-Metadata)")
        parent = parseUUID(metadata[kind.parent], kind.parent)
    uuid = parseUUID(metadata["uuid"]) if metadata.get("uuid") else None
    return NewUpload(
        kind=kindName,
        length=length,
        uuid=uuid,
        text={name: metadata[name] for name in kind.text},
        parent=parent,
        label=label,
        sha256=sha256,
        metadata=given,
        concat=concat,
    )


def _unaliased(metadata: Mapping[str, str]) -> dict[str, str]:
    """C{metadata} with L{METADATA_ALIASES} under their fields' names; an
    alias and its field both given must agree."""
    out = dict(metadata)
    for alias, name in METADATA_ALIASES.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if out.setdefault(name, value) != value:
            raise APIError(400, f"Upload-Metadata gives {alias!r} and {name!r} differently")
    return out


def uploadLimit(maxSize: int | None, maxAge: int | None) -> str:
    """The draft's C{Upload-Limit} (a structured dictionary)."""
    members = []
    if maxSize is not None:
        members.append(f"max-size={maxSize}")
    if maxAge is not None:
        members.append(f"max-age={max(0, maxAge)}")
    return ", ".join(members) or "min-size=0"


def resourcePath(kind: str | None, uuid: str | None) -> str | None:
    return f"/{kind}/{uuid}" if kind is not None and uuid is not None else None


@frozen
class Informational:
    """An interim (1xx) response, written raw before the final one."""

    code: int
    reason: str
    headers: Mapping[str, str]

    def encode(self) -> bytes:
        lines = [f"HTTP/1.1 {self.code} {self.reason}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def sendInformational(request: IRequest, response: Informational) -> bool:
    """
    Write an interim response if the final one has not started and the
    client speaks HTTP/1.1 (which must take any 1xx before the final
    response): twisted.web has no API for it, but it writes its own 100
    Continue to the transport the same way.  Whether it was sent.
    """
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if (
        transport is None
        or request.startedWriting  # type: ignore[attr-defined]
        or request.clientproto != b"HTTP/1.1"  # type: ignore[attr-defined]
    ):
        return False
    transport.write(response.encode())
    return True


# The routes' side


def _header(request: IRequest, name: str) -> str | None:
    value = request.getHeader(name.encode())
    return value.decode("latin-1") if value is not None else None


def _mediaType(request: IRequest) -> str:
    return (_header(request, "content-type") or "").split(";")[0].strip().lower()


class UploadsAPI:
    """
    Decodes the requests to C{/uploads}, calls L{Resumable}, encodes its
    answers; the routes (L{morpheo.web._routes}) authenticate and map its
    errors.
    """

    def __init__(self, uploads: Resumable, maxBlobSize: int | None) -> None:
        self.uploads = uploads
        self.maxBlobSize = maxBlobSize

    def _protocol(self, request: IRequest) -> Protocol:
        """Which protocol the request speaks; tus's version is required of tus."""
        request.setHeader(b"Tus-Resumable", TUS_VERSION.encode())
        interop = _header(request, "upload-draft-interop-version")
        if interop is not None:
            parseInterop(interop)
            return Protocol.IETF
        version = _header(request, "tus-resumable")
        if version is None or version.strip() != TUS_VERSION:
            request.setHeader(b"Tus-Version", TUS_VERSION.encode())
            raise APIError(
                412,
                f"a tus request needs Tus-Resumable: {TUS_VERSION}, an IETF draft request"
                f" Upload-Draft-Interop-Version: {INTEROP_VERSION}",
            )
        return Protocol.TUS

    def _common(self, request: IRequest, upload: Upload | None = None) -> None:
        request.setHeader(b"Cache-Control", b"no-store")
        maxAge = int(self.uploads.expiry) if upload is None else self.uploads.remaining(upload)
        request.setHeader(b"Upload-Limit", uploadLimit(self.maxBlobSize, maxAge).encode())
        if upload is not None:
            request.setHeader(b"Upload-Expires", datetimeToString(int(upload.expires)))
            path = resourcePath(upload.kind, upload.uuid)
            if path is not None:
                request.setHeader(RESOURCE_HEADER, mounted(request, path).encode())

    def options(self, request: IRequest) -> bytes:
        request.setHeader(b"Tus-Resumable", TUS_VERSION.encode())
        request.setHeader(b"Tus-Version", TUS_VERSION.encode())
        request.setHeader(b"Tus-Extension", TUS_EXTENSIONS.encode())
        request.setHeader(b"Tus-Checksum-Algorithm", ",".join(CHECKSUMS).encode())
        if self.maxBlobSize is not None:
            request.setHeader(b"Tus-Max-Size", b"%d" % self.maxBlobSize)
        request.setHeader(b"Upload-Draft-Interop-Version", b"%d" % INTEROP_VERSION)
        self._common(request)
        request.setResponseCode(204)
        return b""

    def _body(self, request: IRequest) -> RequestBody:
        if not IStreamingRequest.providedBy(request):
            raise APIError(500, "uploads need the storage resource to be served by StreamingSite")
        body: RequestBody = request.body
        return body

    def _hasBody(self, request: IRequest, body: RequestBody) -> bool:
        return body.length is None or body.length > 0

    async def create(self, request: IRequest, owner: str) -> Any:
        protocol = self._protocol(request)
        metadata = parseMetadata(_header(request, "upload-metadata") or "")
        concat, parts = Concat.NONE, list[str]()
        if (value := _header(request, "upload-concat")) is not None:
            if protocol is Protocol.IETF:
                raise APIError(400, "Upload-Concat is tus's: the draft has no concatenation")
            concat, parts = parseConcat(value)
        length = None
        if (value := _header(request, "upload-length")) is not None:
            length = parseCount(value, "Upload-Length")
        body = self._body(request)
        complete = None
        if protocol is Protocol.IETF:
            complete = parseBoolean(_header(request, "upload-complete") or "")
            if complete is None:
                raise APIError(400, "an upload's creation needs Upload-Complete: ?0 or ?1")
            if complete and body.length is not None:
                if length is not None and length != body.length:
                    raise APIError(400, "Upload-Length and Content-Length disagree")
                length = body.length
        elif concat is not Concat.FINAL and length is None:
            if (_header(request, "upload-defer-length") or "").strip() != "1":
                raise APIError(400, "a tus creation needs Upload-Length, or Upload-Defer-Length: 1")
        new = newUploadOf(metadata, length, concat)
        if concat is Concat.FINAL:
            stored = await self.uploads.concatenate(owner, new, parts)
            path = mounted(request, f"/{stored.kind}/{stored.uuid}")
            request.setHeader(b"Location", path.encode())
            request.setHeader(RESOURCE_HEADER, path.encode())
            request.setHeader(b"Upload-Offset", b"%d" % stored.size)
            return self._stored(request, stored, 201)
        if self._hasBody(request, body) and protocol is Protocol.TUS:
            if _mediaType(request) != TUS_CONTENT_TYPE:
                raise APIError(
                    415, f"an upload's data must be sent as Content-Type: {TUS_CONTENT_TYPE}"
                )
        checksum = _checksum(request)
        upload = await self.uploads.create(owner, new)
        location = mounted(request, f"/uploads/{upload.id}")
        request.setHeader(b"Location", location.encode())
        self._common(request, upload)
        if protocol is Protocol.IETF:
            sendInformational(
                request,
                Informational(
                    104,
                    "Upload Resumption Supported",
                    {
                        "Location": location,
                        "Upload-Draft-Interop-Version": str(INTEROP_VERSION),
                        "Upload-Limit": uploadLimit(self.maxBlobSize, int(self.uploads.expiry)),
                    },
                ),
            )
        progress = Progress(upload)
        if self._hasBody(request, body) or complete:
            chunk = Chunk(0, body.length, checksum=checksum, last=bool(complete))
            progress = await self._append(request, upload.id, owner, chunk, body, protocol)
        return self._answer(request, progress, protocol, 201)

    async def _append(
        self,
        request: IRequest,
        uploadId: str,
        owner: str,
        chunk: Chunk,
        body: RequestBody,
        protocol: Protocol,
    ) -> Progress:
        try:
            return await self.uploads.append(owner, uploadId, chunk, RawSource(body))
        except OffsetMismatch as e:
            request.setHeader(b"Upload-Offset", b"%d" % e.expected)
            if protocol is Protocol.IETF:
                request.setHeader(b"Upload-Complete", b"?0")
            raise

    def _answer(
        self, request: IRequest, progress: Progress, protocol: Protocol, code: int
    ) -> bytes:
        upload = progress.upload
        request.setHeader(b"Upload-Offset", b"%d" % upload.offset)
        if progress.stored is not None:
            stored = progress.stored
            resource = mounted(request, f"/{stored.kind}/{stored.uuid}")
            request.setHeader(RESOURCE_HEADER, resource.encode())
            if protocol is Protocol.IETF:
                request.setHeader(b"Upload-Complete", b"?1")
                return self._stored(request, stored, 201 if code == 201 else 200)
            if code == 201:
                return self._stored(request, stored, 201)
            request.setHeader(b"Repr-Digest", reprDigest(stored.sha256).encode())
            request.setResponseCode(204)
            return b""
        if protocol is Protocol.IETF:
            request.setHeader(b"Upload-Complete", b"?1" if upload.concluded else b"?0")
        request.setHeader(b"Upload-Expires", datetimeToString(int(upload.expires)))
        if code == 201:
            request.setResponseCode(201)
            request.setHeader(b"Content-Length", b"0")
            return b""
        request.setResponseCode(204)
        return b""

    def _stored(self, request: IRequest, stored: StoredObject, code: int) -> bytes:
        request.setHeader(b"Repr-Digest", reprDigest(stored.sha256).encode())
        body = json.dumps(stored.asJSON()).encode() + b"\n"
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    async def head(self, request: IRequest, owner: str, uploadId: str) -> bytes:
        protocol = self._protocol(request)
        upload = await self.uploads.get(owner, uploadId)
        self._common(request, upload)
        request.setHeader(b"Upload-Offset", b"%d" % upload.offset)
        if upload.length is not None:
            request.setHeader(b"Upload-Length", b"%d" % upload.length)
        elif protocol is Protocol.TUS:
            request.setHeader(b"Upload-Defer-Length", b"1")
        if upload.metadata and protocol is Protocol.TUS:
            request.setHeader(b"Upload-Metadata", encodeMetadata(upload.metadata).encode())
        if upload.concat is Concat.PARTIAL and protocol is Protocol.TUS:
            request.setHeader(b"Upload-Concat", b"partial")
        if protocol is Protocol.IETF:
            request.setHeader(b"Upload-Complete", b"?1" if upload.concluded else b"?0")
        request.setResponseCode(200 if protocol is Protocol.TUS else 204)
        return b""

    async def patch(self, request: IRequest, owner: str, uploadId: str) -> bytes:
        protocol = self._protocol(request)
        body = self._body(request)
        wanted = TUS_CONTENT_TYPE if protocol is Protocol.TUS else IETF_CONTENT_TYPE
        if _mediaType(request) != wanted:
            raise APIError(415, f"a PATCH to an upload must be sent as Content-Type: {wanted}")
        offset = _header(request, "upload-offset")
        if offset is None:
            raise APIError(400, "a PATCH to an upload needs Upload-Offset")
        length = None
        if (value := _header(request, "upload-length")) is not None:
            length = parseCount(value, "Upload-Length")
        last = False
        if protocol is Protocol.IETF:
            complete = parseBoolean(_header(request, "upload-complete") or "")
            if complete is None:
                raise APIError(400, "a PATCH to an upload needs Upload-Complete: ?0 or ?1")
            last = complete
        chunk = Chunk(
            parseCount(offset, "Upload-Offset"),
            body.length,
            length=length,
            checksum=_checksum(request),
            last=last,
        )
        progress = await self._append(request, uploadId, owner, chunk, body, protocol)
        return self._answer(request, progress, protocol, 204)

    async def delete(self, request: IRequest, owner: str, uploadId: str) -> bytes:
        self._protocol(request)
        await self.uploads.cancel(owner, uploadId)
        request.setResponseCode(204)
        return b""


def _checksum(request: IRequest) -> tuple[str, bytes] | None:
    value = _header(request, "upload-checksum")
    return parseChecksum(value) if value is not None else None
