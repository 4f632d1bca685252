# -*- test-case-name: tests.integration.test_api -*-
"""
The HTTP routes of the contract (see the README), on Klein.

Uploads need a L{StreamingSite}: their handlers run once the headers are in,
decide everything that can be decided from them (auth, kind, the model's
algo, length limits) before reading a byte of the body, then stream it.
"""

from __future__ import annotations

import json
import secrets
import uuid as _uuid
from typing import Any, TypeVar
from urllib.parse import urlencode

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .._interfaces import IBlobStore, IBlobWriter
from .._types import KINDS, APIError, BlobInfo, BlobStoreError, Resource, SizeMismatch
from ..blobstores._verify import DigestMismatch, verifying
from ..metadata._postgres import DatabaseError, MetadataStore
from ._auth import BasicAuth, Unauthorized
from ._download import RangeNotSatisfiable, describe, preconditions, serveBlob
from ._forms import PATCH_FORM, UPLOAD_FORMS, parseSize, parseUUID
from ._http import parseContentMD5, parseReprDigest, parseSHA256Field, reprDigest
from ._streaming import IStreamingRequest, RequestBody
from ._upload import FormUpload, RawUpload, sizeError

T = TypeVar("T")

ROUTES = [
    "GET /",
    "GET /health",
    "GET /ready",
    "GET /{kind}",
    "POST /{kind}",
    "GET /{kind}/{uuid}",
    "DELETE /{kind}/{uuid}",
    "GET /{kind}/{uuid}/blob",
    "PATCH /problem/{uuid}",
]

#: The most a form can hold besides its blob: a few text fields of at most
#: 255 characters with their part headers.  A form body longer than the
#: largest blob by more than this is refused from its Content-Length.
FORM_OVERHEAD = 64 * 1024

DEFAULT_LIMIT = 30
MAX_LIMIT = 1000

#: Content types that say nothing about a model's bytes (curl's default for
#: --data-binary is a form encoding).
_MEANINGLESS_TYPES = {"application/x-www-form-urlencoded", ""}


def blobKey(kind: str, uuid: str) -> str:
    """A fresh key: a PATCH's new blob never overwrites the one in use."""
    return f"{kind}/{uuid}-{secrets.token_hex(6)}"


def _json(request: IRequest, value: Any, code: int = 200) -> bytes:
    body = json.dumps(value).encode("utf-8") + b"\n"
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _boundary(request: IRequest) -> bytes:
    """The multipart boundary, or a 400 saying multipart is required."""
    ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
    mime, _, params = ctype.partition(";")
    if mime.strip().lower() == "multipart/form-data":
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "boundary" and value:
                return value.strip('"').encode("latin-1")
    raise APIError(
        400,
        "this upload must be multipart/form-data (e.g. curl -F name=value -F blob=@file);"
        f" got {ctype[:80] or 'no Content-Type'}",
    )


def _expectedDigests(headers: dict[str, str], sha256Field: str | None = None) -> dict[str, bytes]:
    """
    The digests a client stated for its blob, by hashlib name: a
    C{Repr-Digest}, a C{Content-MD5}, a C{sha256} field.  Two statements of
    one digest must agree.
    """
    expected: dict[str, bytes] = {}
    if "repr-digest" in headers:
        expected.update(parseReprDigest(headers["repr-digest"]))
    if "content-md5" in headers:
        expected["md5"] = parseContentMD5(headers["content-md5"])
    if sha256Field is not None:
        field = parseSHA256Field(sha256Field)
        if expected.setdefault("sha256", field) != field:
            raise APIError(400, "the sha256 field and the Repr-Digest disagree")
    return expected


def _requestHeaders(request: IRequest, *names: str) -> dict[str, str]:
    out = {}
    for name in names:
        value = request.getHeader(name.encode())
        if value is not None:
            out[name] = value.decode("latin-1")
    return out


class StorageAPI:
    """
    The storage service's web layer: give it a metadata store, a blob store
    and an authenticator, serve L{resource} with a L{StreamingSite}.
    """

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        *,
        metadata: MetadataStore,
        store: IBlobStore,
        auth: BasicAuth,
        maxBlobSize: int | None = None,
        reactor: Any = None,
        pool: ThreadPool | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.metadata = metadata
        self.store = store
        self.auth = auth
        self.maxBlobSize = maxBlobSize
        self._reactor = reactor
        self._pool = pool if pool is not None else reactor.getThreadPool()

    def resource(self) -> IResource:
        return self.app.resource()

    # Open routes

    @app.route("/", methods=["GET"])
    def routes(self, request: IRequest) -> bytes:
        return _json(request, ROUTES)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """Liveness: the process answers."""
        return _json(request, {"status": "ok"})

    @app.route("/ready", methods=["GET"])
    async def ready(self, request: IRequest) -> bytes:
        """Readiness: the database and the blob store both answer."""
        checks = {"database": self.metadata.ping, "blobstore": self.store.check}
        report: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await check()
            except Exception as e:
                report[name] = f"failing: {e}"
            else:
                report[name] = "ok"
        ok = all(v == "ok" for v in report.values())
        return _json(
            request, {"status": "ready" if ok else "not ready", **report}, 200 if ok else 503
        )

    # Reading

    @app.route("/<kind>", methods=["GET", "HEAD"])
    async def list(self, request: IRequest, kind: str) -> bytes:
        """
        A page, newest first.  C{next} is the path of the next page (a keyset
        cursor: no item lost or repeated while uploads arrive), L{None} on
        the last; C{page} counts the pages followed.
        """
        await self._check(request, kind)
        known = {"page", "limit", "cursor", "algo", "name"}
        unknown = sorted(
            k.decode("latin-1") for k in request.args if k.decode("latin-1") not in known
        )
        if unknown:
            raise APIError(
                400, f"unknown parameter {unknown[0]!r}: lists take {', '.join(sorted(known))}"
            )
        limit = self._intArg(request, "limit", DEFAULT_LIMIT)
        if not 1 <= limit <= MAX_LIMIT:
            raise APIError(400, f"limit must be between 1 and {MAX_LIMIT}")
        filters: dict[str, str] = {}
        algo = self._strArg(request, "algo")
        if algo is not None:
            if kind != "model":
                raise APIError(400, "only models can be listed by algo")
            filters["algo"] = parseUUID(algo, "algo")
        name = self._strArg(request, "name")
        if name is not None:
            if kind not in ("algo", "problem"):
                raise APIError(400, "only algos and problems have a name to filter on")
            filters["name"] = name
        cursor = self._strArg(request, "cursor")
        if cursor is not None:
            page, before = _parseCursor(cursor)
            items = await self.metadata.list(
                kind, limit + 1, before=before, algo=filters.get("algo"), namePrefix=name
            )
        else:
            page = self._intArg(request, "page", 0)
            items = await self.metadata.list(
                kind, limit + 1, page * limit, algo=filters.get("algo"), namePrefix=name
            )
        more, items = len(items) > limit, items[:limit]
        nextPage = None
        if more:
            query = {"limit": str(limit), **filters, "cursor": f"{page + 1}.{items[-1].seq}"}
            nextPage = f"/{kind}?{urlencode(query)}"
        return _json(
            request,
            {
                "page": page,
                "length": len(items),
                "items": [r.asJSON() for r in items],
                "next": nextPage,
            },
        )

    @app.route("/<kind>/<uuid>", methods=["GET", "HEAD"])
    async def get(self, request: IRequest, kind: str, uuid: str) -> bytes:
        await self._check(request, kind)
        resource = await self._find(kind, uuid)
        describe(request, resource)
        status = preconditions(request, resource)
        if status is not None:
            request.setResponseCode(status)
            return b""
        return _json(request, resource.asJSON())

    @app.route("/<kind>/<uuid>/blob", methods=["GET", "HEAD"])
    async def blob(self, request: IRequest, kind: str, uuid: str) -> Any:
        await self._check(request, kind)
        resource = await self._find(kind, uuid)
        return await serveBlob(request, resource, self.store)

    # Writing

    @app.route("/<kind>", methods=["POST"])
    async def upload(self, request: IRequest, kind: str) -> bytes:
        await self._check(request, kind)
        body = self._body(request)
        if kind == "model":
            return await self._uploadModel(request, body)
        self._refuseRequestDigests(request)
        self._checkLength(body.length, FORM_OVERHEAD)
        upload = FormUpload(UPLOAD_FORMS[kind], _boundary(request), body.length)
        body.deliverBody(upload)
        try:
            await upload.fieldsReady()
            fields = upload.fields
            size = parseSize(fields["size"])
            self._checkLength(size)
            expected = _expectedDigests(upload.blobHeaders, fields.get("sha256"))
            uuid = fields.get("uuid") or str(_uuid.uuid4())
            key = blobKey(kind, uuid)
            await self._claim(
                kind,
                uuid,
                blobKey=key,
                name=fields.get("name"),
                description=fields.get("description"),
                contentType=upload.blobContentType,
                filename=upload.blobFilename,
            )
        except BaseException:
            upload.stop()
            raise
        try:
            writer = self._writer(key, size, expected)
            upload.streamBlobTo(writer)
            resource = await self._receive(kind, uuid, key, writer, upload, expected)
        except BaseException:
            await self._quietly(self.metadata.release(kind, uuid))
            raise
        request.setHeader(b"Repr-Digest", reprDigest(resource.sha256).encode())
        return _json(request, resource.asJSON(), 201)

    async def _uploadModel(self, request: IRequest, body: RequestBody) -> bytes:
        args = {k.decode("utf-8", "replace"): v for k, v in request.args.items()}
        unknown = sorted(set(args) - {"algo", "uuid"})
        if unknown:
            raise APIError(400, f"unknown field {unknown[0]!r}: a model upload takes algo and uuid")
        if "algo" not in args:
            raise APIError(400, "missing required field algo: POST /model?algo={algo uuid}")
        algo = parseUUID(args["algo"][0].decode("utf-8", "replace"), "algo")
        uuid = (
            parseUUID(args["uuid"][0].decode("utf-8", "replace"))
            if "uuid" in args
            else str(_uuid.uuid4())
        )
        if body.length is None:
            raise APIError(411, "a model upload needs a Content-Length (the model's size)")
        self._checkLength(body.length)
        expected = _expectedDigests(_requestHeaders(request, "repr-digest", "content-md5"))
        ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
        ctype = None if ctype.split(";")[0].strip().lower() in _MEANINGLESS_TYPES else ctype
        key = blobKey("model", uuid)
        claim, cancelled = await _toTheEnd(
            ensureDeferred(self.metadata.claimModel(uuid, algo, key, ctype))
        )
        if cancelled:
            if claim == "claimed":
                await self._quietly(self.metadata.release("model", uuid))
            raise CancelledError()
        if claim == "no algo":
            raise APIError(404, f"there is no algo {algo} to attach this model to")
        if claim == "taken":
            raise APIError(409, f"model {uuid} already exists (or is being uploaded)")
        try:
            writer = self._writer(key, body.length, expected)
            upload = RawUpload(writer)
            body.deliverBody(upload)
            resource = await self._receive("model", uuid, key, writer, upload, expected)
        except BaseException:
            await self._quietly(self.metadata.release("model", uuid))
            raise
        request.setHeader(b"Repr-Digest", reprDigest(resource.sha256).encode())
        return _json(request, resource.asJSON(), 201)

    def _writer(self, key: str, size: int, expected: dict[str, bytes]) -> IBlobWriter:
        return verifying(self.store.writer(key, size), expected, self._reactor, self._pool)

    def _refuseRequestDigests(self, request: IRequest) -> None:
        if _requestHeaders(request, "repr-digest", "content-md5"):
            raise APIError(
                400,
                "a form's Repr-Digest or Content-MD5 would be the whole form's: state the"
                " blob's digest in a sha256 field, or in the headers of the blob part",
            )

    async def _receiveBlob(
        self,
        key: str,
        writer: IBlobWriter,
        upload: FormUpload | RawUpload,
        expected: dict[str, bytes],
    ) -> BlobInfo:
        """Wait for the whole body and commit the blob, checked against the
        digests the client stated; abort or delete it on failure."""
        try:
            await upload.done()
            info = await writer.finish()
        except SizeMismatch as e:
            await self._quietly(writer.abort())
            raise sizeError(e) from None
        except BaseException:
            upload.stop()
            await self._quietly(writer.abort())
            raise
        if "sha256" in expected and bytes.fromhex(info.sha256) != expected["sha256"]:
            # The store computes sha256 as it commits; no row points here yet.
            await self._quietly(self.store.delete(key))
            raise DigestMismatch("sha256")
        return info

    async def _receive(
        self,
        kind: str,
        uuid: str,
        key: str,
        writer: IBlobWriter,
        upload: FormUpload | RawUpload,
        expected: dict[str, bytes],
    ) -> Resource:
        """Commit the blob, then its row; undo both on failure."""
        info = await self._receiveBlob(key, writer, upload, expected)
        try:
            return await self.metadata.complete(kind, uuid, info.size, info.sha256)
        except BaseException:
            await self._quietly(self.store.delete(key))
            raise

    @app.route("/problem/<uuid>", methods=["PATCH"])
    async def patch(self, request: IRequest, uuid: str) -> bytes:
        kind = "problem"
        await self._check(request, kind)
        current = await self._find(kind, uuid)
        uuid = current.uuid
        if preconditions(request, current) is not None:
            raise APIError(412, f"problem {uuid} is not the version this change was made for")
        self._refuseRequestDigests(request)
        body = self._body(request)
        upload = FormUpload(PATCH_FORM, _boundary(request), body.length)
        body.deliverBody(upload)
        claimed = None
        try:
            hasBlob = await upload.fieldsReady()
            fields = upload.fields
            newUUID = fields.get("uuid")
            expected = _expectedDigests(upload.blobHeaders, fields.get("sha256"))
            if hasBlob:
                self._checkLength(parseSize(fields["size"]))
            key = blobKey(kind, newUUID or uuid) if hasBlob else None
            if newUUID is not None and newUUID != uuid:
                await self._claim(kind, newUUID, blobKey=key)
                claimed = newUUID
        except BaseException:
            upload.stop()
            raise
        try:
            blob = None
            if key is not None:
                writer = self._writer(key, parseSize(fields["size"]), expected)
                upload.streamBlobTo(writer)
                try:
                    info = await self._receiveBlob(key, writer, upload, expected)
                except BaseException:
                    key = None
                    raise
                blob = (info.size, info.sha256, key)
            else:
                await upload.done()
            result = await self.metadata.patch(
                kind,
                uuid,
                newUUID=newUUID,
                name=fields.get("name"),
                description=fields.get("description"),
                blob=blob,
                contentType=upload.blobContentType,
                filename=upload.blobFilename,
            )
            if result is None:
                raise APIError(404, f"problem {uuid} was deleted or renamed during this change")
        except BaseException:
            if key is not None:
                await self._quietly(self.store.delete(key))
            if claimed is not None:
                await self._quietly(self.metadata.release(kind, claimed))
            raise
        if result.oldBlobKey is not None:
            await self._quietly(self.store.delete(result.oldBlobKey))
        request.setHeader(b"Repr-Digest", reprDigest(result.resource.sha256).encode())
        return _json(request, result.resource.asJSON())

    @app.route("/<kind>/<uuid>", methods=["DELETE"])
    async def delete(self, request: IRequest, kind: str, uuid: str) -> bytes:
        """
        The row goes first, in a transaction, then the blob: a failure in
        between leaves an unreferenced blob (swept later), never a row
        without its blob.
        """
        await self._check(request, kind)
        uuid = parseUUID(uuid)
        current = await self._find(kind, uuid)
        if preconditions(request, current) is not None:
            raise APIError(412, f"{kind} {uuid} is not the version this deletion was made for")
        outcome = await self.metadata.delete(kind, uuid)
        if outcome is None:
            raise APIError(404, f"there is no {kind} {uuid}")
        if isinstance(outcome, list):
            raise APIError(
                409,
                f"algo {uuid} is used by models {', '.join(outcome)}: delete them first",
            )
        await self._quietly(self.store.delete(outcome.blob_key))
        return _json(request, outcome.asJSON())

    # Errors

    @app.handle_errors(APIError)
    def _apiError(self, request: IRequest, failure: Failure) -> bytes:
        error: APIError = failure.value  # type: ignore[assignment]
        if isinstance(error, Unauthorized):
            request.setHeader(
                b"WWW-Authenticate", f'Basic realm="{error.realm}", charset="UTF-8"'.encode()
            )
        return _json(request, {"error": error.message}, error.code)

    @app.handle_errors(RangeNotSatisfiable)
    def _rangeError(self, request: IRequest, failure: Failure) -> bytes:
        size = failure.value.size  # type: ignore[union-attr]
        request.setHeader(b"Content-Range", f"bytes */{size}".encode())
        return _json(request, {"error": f"no requested range is within the {size} bytes"}, 416)

    @app.handle_errors(DatabaseError)
    def _databaseError(self, request: IRequest, failure: Failure) -> bytes:
        self._log.failure("metadata database failure", failure)
        return _json(request, {"error": str(failure.value)}, 503)

    @app.handle_errors(BlobStoreError)
    def _storeError(self, request: IRequest, failure: Failure) -> bytes:
        self._log.failure("blob store failure", failure)
        code = 500 if self.store.name in ("local", "mock") else 502
        message = f"the blob store ({self.store.name}) failed: {failure.value}"
        return _json(request, {"error": message}, code)

    @app.handle_errors(NotFound)
    def _notFound(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"error": "no such route; GET / lists them"}, 404)

    @app.handle_errors(MethodNotAllowed)
    def _notAllowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = ", ".join(failure.value.valid_methods or [])  # type: ignore[union-attr]
        request.setHeader(b"Allow", allowed.encode())
        return _json(request, {"error": f"method not allowed here; allowed: {allowed}"}, 405)

    # Helpers

    async def _check(self, request: IRequest, kind: str) -> str:
        """Credentials first, then the kind.  The user's name is kept on the
        request (C{morpheoUser}) for the access log."""
        user: str = await maybeDeferred(self.auth.check, request)
        request.morpheoUser = user  # type: ignore[attr-defined]
        if kind not in KINDS:
            raise APIError(404, f"unknown kind {kind[:80]!r}: one of {', '.join(KINDS)}")
        return user

    def _body(self, request: IRequest) -> RequestBody:
        if not IStreamingRequest.providedBy(request):
            # A stock twisted.web Site has already read the whole body (into
            # memory or a temporary file) before any resource runs: too late
            # to stream, and to refuse before it is sent.
            raise APIError(
                500,
                "uploads need the storage resource to be served by morpheo.StreamingSite:"
                " this site read the whole body before the storage service saw it",
            )
        body: RequestBody = request.body
        return body

    def _checkLength(self, length: int | None, overhead: int = 0) -> None:
        """413 for a blob (or a body, with its C{overhead}) over the maximum."""
        limit = self.maxBlobSize
        if limit is not None and length is not None and length > limit + overhead:
            raise APIError(413, f"the blob is larger than the maximum of {self.maxBlobSize} bytes")

    async def _find(self, kind: str, uuid: str) -> Resource:
        resource = await self.metadata.get(kind, parseUUID(uuid))
        if resource is None:
            raise APIError(404, f"there is no {kind} {uuid}")
        return resource

    def _strArg(self, request: IRequest, name: str) -> str | None:
        values = request.args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values else None

    async def _claim(self, kind: str, uuid: str, **fields: str | None) -> None:
        claimed, cancelled = await _toTheEnd(
            ensureDeferred(self.metadata.claim(kind, uuid, **fields))
        )
        if cancelled:
            if claimed:
                await self._quietly(self.metadata.release(kind, uuid))
            raise CancelledError()
        if not claimed:
            raise APIError(409, f"{kind} {uuid} already exists (or is being uploaded)")

    def _intArg(self, request: IRequest, name: str, default: int) -> int:
        values = request.args.get(name.encode())
        if not values:
            return default
        value = values[0].decode("latin-1")
        if not value.isdigit():
            raise APIError(400, f"{name} must be a non-negative integer, not {value[:40]!r}")
        return int(value)

    async def _quietly(self, d: Any) -> None:
        """Clean-up that must not hide the error being handled, nor be cut
        short by a cancellation (see L{_toTheEnd})."""
        try:
            await _toTheEnd(ensureDeferred(d))
        except Exception:
            self._log.failure("clean-up after a failed request failed")


async def _toTheEnd(d: Deferred[T]) -> tuple[T, bool]:
    """
    C{d}'s result, and whether the handler awaiting it was cancelled
    meanwhile.  Klein cancels the handler of a client that went away (the
    graceful stop cuts connections too), and a cancellation that reached a
    database write or a clean-up would abandon it with its outcome unknown:
    a claim made anyway would keep its uuid, a clean-up would be half done.
    So C{d} is waited for to its end; a failure of C{d} is raised.
    """
    outcome: list[T | Failure] = []
    waiting: list[Deferred[None]] = []

    def finished(result: T | Failure) -> None:
        outcome.append(result)
        for waiter in waiting:
            if not waiter.called:
                waiter.callback(None)

    d.addBoth(finished)
    cancelled = False
    while not outcome:
        waiter: Deferred[None] = Deferred()
        waiting.append(waiter)
        try:
            await waiter
        except CancelledError:
            cancelled = True
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result, cancelled


def _parseCursor(cursor: str) -> tuple[int, int]:
    """A cursor is C{page.seq}: the page it opens, and the completion
    order it continues below."""
    page, _, seq = cursor.partition(".")
    if not (page.isdigit() and seq.isdigit()):
        raise APIError(400, "cursor is not one this service gave; follow the list's next")
    return int(page), int(seq)
