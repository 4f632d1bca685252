# -*- test-case-name: tests.test_api -*-
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
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, maybeDeferred
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ._auth import BasicAuth, Unauthorized
from ._forms import PATCH_FORM, UPLOAD_FORMS, parseSize, parseUUID
from ._interfaces import IBlobStore, IBlobWriter
from ._metadata import DatabaseError, MetadataStore
from ._streaming import IStreamingRequest, RequestBody
from ._types import KINDS, APIError, BlobInfo, BlobStoreError, Resource, SizeMismatch
from ._upload import FormUpload, RawUpload, sizeError

ROUTES = [
    "GET /",
    "GET /health",
    "GET /ready",
    "GET /{kind}",
    "POST /{kind}",
    "GET /{kind}/{uuid}",
    "GET /{kind}/{uuid}/blob",
    "PATCH /problem/{uuid}",
]

#: The most a form can hold besides its blob: a few text fields of at most
#: 255 characters with their part headers.  A form body longer than the
#: largest blob by more than this is refused from its Content-Length.
FORM_OVERHEAD = 64 * 1024

DEFAULT_LIMIT = 30
MAX_LIMIT = 1000


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
    ) -> None:
        self.metadata = metadata
        self.store = store
        self.auth = auth
        self.maxBlobSize = maxBlobSize

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

    # Data routes

    @app.route("/<kind>", methods=["GET"])
    async def list(self, request: IRequest, kind: str) -> bytes:
        await self._check(request, kind)
        page = self._intArg(request, "page", 0)
        limit = self._intArg(request, "limit", DEFAULT_LIMIT)
        if not 1 <= limit <= MAX_LIMIT:
            raise APIError(400, f"limit must be between 1 and {MAX_LIMIT}")
        items = await self.metadata.list(kind, limit, page * limit)
        return _json(
            request,
            {"page": page, "length": len(items), "items": [r.asJSON() for r in items]},
        )

    @app.route("/<kind>/<uuid>", methods=["GET"])
    async def get(self, request: IRequest, kind: str, uuid: str) -> bytes:
        await self._check(request, kind)
        resource = await self._find(kind, uuid)
        return _json(request, resource.asJSON())

    @app.route("/<kind>/<uuid>/blob", methods=["GET"])
    async def blob(self, request: IRequest, kind: str, uuid: str) -> Any:
        await self._check(request, kind)
        resource = await self._find(kind, uuid)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % resource.size)
        request.setHeader(b"ETag", f'"{resource.sha256}"'.encode())
        try:
            await self.store.produce(resource.blob_key, IConsumer(request))
        except BlobStoreError:
            if request.startedWriting:  # type: ignore[attr-defined]
                # A finished response would look complete: cut it instead.
                self._log.failure("download of {kind} {uuid} failed", kind=kind, uuid=uuid)
                request.channel.transport.abortConnection()  # type: ignore[attr-defined]
                return NOT_DONE_YET
            raise
        return b""

    @app.route("/<kind>", methods=["POST"])
    async def upload(self, request: IRequest, kind: str) -> bytes:
        await self._check(request, kind)
        body = self._body(request)
        if kind == "model":
            return await self._uploadModel(request, body)
        self._checkLength(body.length, FORM_OVERHEAD)
        upload = FormUpload(UPLOAD_FORMS[kind], _boundary(request), body.length)
        body.deliverBody(upload)
        try:
            await upload.fieldsReady()
            fields = upload.fields
            size = parseSize(fields["size"])
            self._checkLength(size)
            uuid = fields.get("uuid") or str(_uuid.uuid4())
            await self._claim(
                kind, uuid, name=fields.get("name"), description=fields.get("description")
            )
        except BaseException:
            upload.stop()
            raise
        try:
            key = blobKey(kind, uuid)
            writer = self.store.writer(key, size)
            upload.streamBlobTo(writer)
            resource = await self._receive(kind, uuid, key, writer, upload)
        except BaseException:
            await self._quietly(self.metadata.release(kind, uuid))
            raise
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
        if not await self.metadata.algoExists(algo):
            raise APIError(404, f"there is no algo {algo} to attach this model to")
        await self._claim("model", uuid, algo=algo)
        try:
            key = blobKey("model", uuid)
            writer = self.store.writer(key, body.length)
            upload = RawUpload(writer)
            body.deliverBody(upload)
            resource = await self._receive("model", uuid, key, writer, upload)
        except BaseException:
            await self._quietly(self.metadata.release("model", uuid))
            raise
        return _json(request, resource.asJSON(), 201)

    async def _receiveBlob(self, writer: IBlobWriter, upload: FormUpload | RawUpload) -> BlobInfo:
        """Wait for the whole body and commit the blob; abort it on failure."""
        try:
            await upload.done()
            return await writer.finish()
        except SizeMismatch as e:
            await self._quietly(writer.abort())
            raise sizeError(e) from None
        except BaseException:
            upload.stop()
            await self._quietly(writer.abort())
            raise

    async def _receive(
        self, kind: str, uuid: str, key: str, writer: IBlobWriter, upload: FormUpload | RawUpload
    ) -> Resource:
        """Commit the blob, then its row; undo both on failure."""
        info = await self._receiveBlob(writer, upload)
        try:
            return await self.metadata.complete(kind, uuid, info.size, info.sha256, key)
        except BaseException:
            await self._quietly(self.store.delete(key))
            raise

    @app.route("/problem/<uuid>", methods=["PATCH"])
    async def patch(self, request: IRequest, uuid: str) -> bytes:
        kind = "problem"
        await self._check(request, kind)
        await self._find(kind, uuid)
        uuid = parseUUID(uuid)
        body = self._body(request)
        upload = FormUpload(PATCH_FORM, _boundary(request), body.length)
        body.deliverBody(upload)
        claimed = None
        try:
            hasBlob = await upload.fieldsReady()
            fields = upload.fields
            newUUID = fields.get("uuid")
            if hasBlob:
                self._checkLength(parseSize(fields["size"]))
            if newUUID is not None and newUUID != uuid:
                await self._claim(kind, newUUID)
                claimed = newUUID
        except BaseException:
            upload.stop()
            raise
        key = None
        try:
            blob = None
            if hasBlob:
                key = blobKey(kind, newUUID or uuid)
                writer = self.store.writer(key, parseSize(fields["size"]))
                upload.streamBlobTo(writer)
                try:
                    info = await self._receiveBlob(writer, upload)
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
        return _json(request, result.resource.asJSON())

    # Errors

    @app.handle_errors(APIError)
    def _apiError(self, request: IRequest, failure: Failure) -> bytes:
        error: APIError = failure.value  # type: ignore[assignment]
        if isinstance(error, Unauthorized):
            request.setHeader(
                b"WWW-Authenticate", f'Basic realm="{error.realm}", charset="UTF-8"'.encode()
            )
        return _json(request, {"error": error.message}, error.code)

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
            raise APIError(
                500,
                "uploads need the storage resource to be served by morpheo.StreamingSite",
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

    async def _claim(self, kind: str, uuid: str, **fields: str | None) -> None:
        if not await self.metadata.claim(kind, uuid, **fields):
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
        """Clean-up that must not hide the error being handled."""
        try:
            await d
        except (Exception, CancelledError):
            self._log.failure("clean-up after a failed request failed")
