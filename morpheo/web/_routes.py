# -*- test-case-name: tests.unit.test_reading,tests.unit.test_uploads,tests.integration.test_api -*-
"""
The HTTP routes of the contract (see the README), on Klein: each decodes
its request, calls the domain layer (L{morpheo.objects.Objects}) and
encodes the answer; the domain's typed errors become statuses here, in
one place.

Uploads need a L{StreamingSite}: their handlers run once the headers are
in, decide everything that can be decided from them (auth, kind, the
model's algo, length limits) before reading a byte of the body, then hand
the body to the domain layer as a stream.  The resumable uploads
(C{/uploads}) are decoded by L{morpheo.web._resumable}, behind the same
authentication and the same mapping of typed outcomes to statuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from functools import cache, wraps
from importlib.resources import files
from typing import Any, TypeVar
from urllib.parse import urlencode

from klein import Klein
from klein.interfaces import IKleinRequest
from klein.resource import KleinResource
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from .._errors import (
    APIError,
    BlobMissing,
    BlobStoreError,
    ChecksumMismatch,
    ClaimLost,
    DatabaseError,
    DigestMismatch,
    InUse,
    NoSuchObject,
    NoSuchParent,
    NoSuchUpload,
    OffsetMismatch,
    SizeMismatch,
    Taken,
    TooLarge,
    TooManyUploads,
    UploadBusy,
    UploadConflict,
    Vanished,
)
from .._kinds import KINDS, PARENTS, TABLE, Kind, plural
from .._metrics import Metrics
from .._types import Label, Listing, StoredObject
from ..objects import IncomingBlob, NewObject, Objects, Replacement, Resumable
from ._auth import BasicAuth, Unauthorized
from ._download import (
    RangeNotSatisfiable,
    answerPreconditions,
    describe,
    preconditions,
    serveBlob,
)
from ._forms import (
    MAX_COUNT,
    PATCH_FORM,
    UPLOAD_FORMS,
    asciiCount,
    checkText,
    parseSize,
    parseUUID,
)
from ._http import parseContentMD5, parseReprDigest, parseSHA256Field, reprDigest
from ._metered import RequestMeter, scrape
from ._mount import mounted
from ._resumable import UploadsAPI
from ._streaming import BodyRefused, IStreamingRequest, RequestBody
from ._upload import FormUpload, RawSource

T = TypeVar("T")

#: The most a form can hold besides its blob: a few text fields of at most
#: 255 characters with their part headers.  A form body longer than the
#: largest blob by more than this is refused from its Content-Length.
FORM_OVERHEAD = 64 * 1024

NO_ROUTE = "no such route; GET / lists them"

DEFAULT_LIMIT = 30
MAX_LIMIT = 1000
#: The last page whose items can be counted to in the database.
MAX_PAGE = MAX_COUNT // MAX_LIMIT

#: Content types that say nothing about a model's bytes (curl's default for
#: --data-binary is a form encoding).
_MEANINGLESS_TYPES = {"application/x-www-form-urlencoded", ""}

#: The query parameters of lists: paging, and every kind's filters.
_LIST_PARAMETERS = frozenset({"page", "limit", "cursor", "name", *PARENTS})

Handler = Callable[..., Awaitable[Any]]

#: The statuses of the domain's refusals, the most specific first.
_REFUSALS: dict[type[Exception], int] = {
    Vanished: 404,
    NoSuchObject: 404,
    NoSuchParent: 404,
    Taken: 409,
    InUse: 409,
    DigestMismatch: 400,
    SizeMismatch: 400,
    TooLarge: 413,
    NoSuchUpload: 404,
    OffsetMismatch: 409,
    UploadConflict: 409,
    UploadBusy: 423,
    TooManyUploads: 429,
    ChecksumMismatch: 460,
}
#: The reasons of the statuses twisted.web does not name.
_REASONS = {423: b"Locked", 460: b"Checksum Mismatch"}


@cache
def openAPIDocument() -> bytes:
    """
    The OpenAPI 3.1 description of the routes, as shipped in the package
    (C{morpheo/web/openapi.json}); read once, when the first L{StorageAPI}
    is made, never while serving.
    """
    return files(__package__).joinpath("openapi.json").read_bytes()


def _json(request: IRequest, value: Any, code: int = 200) -> bytes:
    body = json.dumps(value).encode("utf-8") + b"\n"
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _authorized(
    app: Klein, path: str, methods: list[str], **rule: Any
) -> Callable[[Handler], Handler]:
    """
    Declare a data route: its handler runs once the caller is authenticated
    (401 before anything else) and, where the path names a kind, once the
    kind is known (404).  The user's name is kept on the request
    (C{morpheoUser}) for the access log.
    """

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def authorized(self: StorageAPI, request: IRequest, **kwargs: Any) -> Any:
            request.morpheoUser = await maybeDeferred(self.auth.check, request)  # type: ignore[attr-defined]
            kind = kwargs.get("kind")
            if kind is not None and kind not in TABLE:
                raise APIError(404, f"unknown kind {kind[:80]!r}: one of {', '.join(KINDS)}")
            return await handler(self, request, **kwargs)

        app.route(path, methods=methods, **rule)(authorized)
        return authorized

    return decorate


def routeList(app: Klein) -> list[str]:
    """C{METHOD /path} of every route of C{app}, in the order they were declared."""
    routes = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append(f"{method} {path}")
    return routes


#: A multipart boundary (RFC 2046 section 5.1.1): 1 to 70 characters of
#: these, the last not a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def _boundary(request: IRequest) -> bytes:
    """The multipart boundary, or a 400 saying multipart is required, or
    what is wrong with its boundary."""
    ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
    mime, _, params = ctype.partition(";")
    if mime.strip().lower() == "multipart/form-data":
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() != "boundary":
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if not _BOUNDARY.fullmatch(value):
                raise APIError(
                    400,
                    "the multipart/form-data boundary must be 1 to 70 letters, digits or"
                    f" '()+_,-./:=? (RFC 2046), not {value[:80]!r}",
                )
            return value.encode("ascii")
        raise APIError(
            400,
            "a multipart/form-data body needs a boundary: Content-Type: multipart/form-data;"
            " boundary=...",
        )
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


def _refuseRequestDigests(request: IRequest) -> None:
    if _requestHeaders(request, "repr-digest", "content-md5"):
        raise APIError(
            400,
            "a form's Repr-Digest or Content-MD5 would be the whole form's: state the"
            " blob's digest in a sha256 field, or in the headers of the blob part",
        )


def _body(request: IRequest) -> RequestBody:
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


def _strArg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    value: str = values[0].decode("utf-8", "replace")
    checkText(f"parameter {name!r}", value)
    return value


def _intArg(request: IRequest, name: str, default: int, maximum: int = MAX_COUNT) -> int:
    values = request.args.get(name.encode())
    if not values:
        return default
    value = values[0].decode("latin-1")
    number = asciiCount(value)
    if number is None:
        raise APIError(400, f"{name} must be a non-negative integer, not {value[:40]!r}")
    if number > maximum:
        raise APIError(400, f"{name} must be at most {maximum}")
    return number


def _parseCursor(cursor: str) -> tuple[int, int]:
    """A cursor is C{page.seq}: the page it opens, and the completion
    order it continues below."""
    page, _, seq = cursor.partition(".")
    pageNumber, before = asciiCount(page), asciiCount(seq)
    if pageNumber is None or before is None or pageNumber > MAX_PAGE or before > MAX_COUNT:
        raise APIError(400, "cursor is not one this service gave; follow the list's next")
    return pageNumber, before


def _formBlob(upload: FormUpload, size: int) -> IncomingBlob:
    """A form's blob part: its announced size, its stated digests, its label."""
    expected = _expectedDigests(upload.blobHeaders, upload.fields.get("sha256"))
    return IncomingBlob(size, expected, Label(upload.blobContentType, upload.blobFilename))


def _created(request: IRequest, stored: StoredObject, code: int = 201) -> bytes:
    request.setHeader(b"Repr-Digest", reprDigest(stored.sha256).encode())
    return _json(request, stored.asJSON(), code)


class StorageAPI:
    """
    The storage service's web layer: give it the domain layer's
    L{Objects} and an authenticator, serve L{resource} with a
    L{StreamingSite}.

    @param redirectLifetime: redirect the GETs of blobs to the blob store
        (which must be an L{IRedirectableBlobStore}) with URLs valid that
        many seconds; L{None} serves every download here.
    @param metrics: what the requests are counted in (a fresh L{Metrics}
        by default), served at C{/metrics} behind the credentials unless
        C{metricsHere} is false (served apart, see L{MetricsPage}).
    @param clock: the requests' durations are its (the domain layer's
        reactor by default).
    @param pool: the thread pool a scrape's page is made in (a page of many
        series takes milliseconds); without one, it is made at once.
    """

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        objects: Objects,
        auth: BasicAuth,
        redirectLifetime: int | None = None,
        *,
        metrics: Metrics | None = None,
        clock: IReactorTime | None = None,
        metricsHere: bool = True,
        pool: ThreadPool | None = None,
        uploads: Resumable | None = None,
    ) -> None:
        if redirectLifetime is not None and not objects.redirectable:
            raise ValueError(
                f"downloads can be redirected only to a store that serves them itself,"
                f" not {objects.blobs.name}"
            )
        self.objects = objects
        self.auth = auth
        self.redirectLifetime = redirectLifetime
        self.metrics = Metrics() if metrics is None else metrics
        self._clock: IReactorTime = objects.reactor if clock is None else clock  # type: ignore[assignment]
        self._metricsHere = metricsHere
        self._pool = pool
        self.meter = RequestMeter(self.metrics, self._clock, self.app)
        self._document = openAPIDocument()
        #: The resumable uploads (C{/uploads}), if both stores keep them.
        self.uploads = UploadsAPI(uploads, objects.maxBlobSize) if uploads is not None else None

    def resource(self) -> IResource:
        """The routes, their requests counted in L{metrics}."""
        return self.meter.resource(KleinResource(self.routedApp()))

    def routedApp(self) -> Any:
        """The Klein app as L{KleinResource} reads it, each endpoint noting its
        route for L{meter} (wrap it further, then L{RequestMeter.resource})."""
        return self.meter.app(self.app)

    # Open routes

    @app.route("/", methods=["GET"])
    def routes(self, request: IRequest) -> bytes:
        """The routes of the API, as C{METHOD /path} lines (C{/metrics} only if served here)."""
        routes = routeList(self.app)
        if not self._metricsHere:
            routes.remove("GET /metrics")
        return _json(request, routes)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """Liveness: the process answers."""
        return _json(request, {"status": "ok"})

    @app.route("/ready", methods=["GET"])
    async def ready(self, request: IRequest) -> bytes:
        """
        Readiness: the database and the blob store both answer.  Anyone may
        ask, so why a part fails (a path, a host, the driver's words) goes
        to the log, never here.
        """
        checks = await self.objects.ready()
        report = {}
        for name, failure in checks.items():
            report[name] = "ok" if failure is None else "unavailable"
            if failure is not None:
                self._log.warn("not ready: the {part} failed: {why}", part=name, why=str(failure))
        ok = all(v == "ok" for v in report.values())
        return _json(
            request, {"status": "ready" if ok else "not ready", **report}, 200 if ok else 503
        )

    @_authorized(app, "/metrics", ["GET"])
    async def scrape(self, request: IRequest) -> bytes:
        """The service's metrics, in the Prometheus text format (or OpenMetrics)."""
        if not self._metricsHere:
            raise APIError(404, "the metrics are not served here")
        return await scrape(self.metrics, request, self._clock, self._pool)

    @app.route("/openapi.json", methods=["GET"])
    def openAPI(self, request: IRequest) -> bytes:
        """This API's OpenAPI document, for clients and their generators."""
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(self._document))
        return self._document

    # Reading

    @_authorized(app, "/<kind>", ["GET", "HEAD"])
    async def list(self, request: IRequest, kind: str) -> bytes:
        """
        A page, newest first.  C{next} is the path of the next page (a keyset
        cursor: no item lost or repeated while uploads arrive), L{None} on
        the last; C{page} counts the pages followed.
        """
        rules = TABLE[kind]
        unknown = sorted(
            k.decode("latin-1") for k in request.args if k.decode("latin-1") not in _LIST_PARAMETERS
        )
        if unknown:
            raise APIError(
                400,
                f"unknown parameter {unknown[0]!r}:"
                f" lists take {', '.join(sorted(_LIST_PARAMETERS))}",
            )
        limit = _intArg(request, "limit", DEFAULT_LIMIT)
        if not 1 <= limit <= MAX_LIMIT:
            raise APIError(400, f"limit must be between 1 and {MAX_LIMIT}")
        filters: dict[str, str] = {}
        for parent in PARENTS:
            value = _strArg(request, parent)
            if value is not None:
                if rules.parent != parent:
                    children = [k.name for k in TABLE.values() if k.parent == parent]
                    raise APIError(400, f"only {plural(children)} can be listed by {parent}")
                filters[parent] = parseUUID(value, parent)
        name = _strArg(request, "name")
        if name is not None:
            if not rules.nameFilter:
                named = [k.name for k in TABLE.values() if k.nameFilter]
                raise APIError(400, f"only {plural(named)} have a name to filter on")
            filters["name"] = name
        parentUUID = filters.get(rules.parent) if rules.parent is not None else None
        cursor = _strArg(request, "cursor")
        if cursor is not None:
            page, before = _parseCursor(cursor)
            listing = Listing(limit, before=before, parent=parentUUID, namePrefix=name)
        else:
            page = _intArg(request, "page", 0, MAX_PAGE)
            listing = Listing(limit, page * limit, parent=parentUUID, namePrefix=name)
        found = await self.objects.list(kind, listing)
        nextPage = None
        if found.more:
            query = {"limit": str(limit), **filters, "cursor": f"{page + 1}.{found.items[-1].seq}"}
            nextPage = mounted(request, f"/{kind}?{urlencode(query)}")
        return _json(
            request,
            {
                "page": page,
                "length": len(found.items),
                "items": [r.asJSON() for r in found.items],
                "next": nextPage,
            },
        )

    @_authorized(app, "/<kind>", ["POST"])
    async def upload(self, request: IRequest, kind: str) -> bytes:
        """
        A new object: a multipart form whose text fields come before its
        C{blob}, or for a kind uploaded raw (a model) the body itself.
        """
        rules = TABLE[kind]
        body = _body(request)
        if rules.rawBody:
            return await self._uploadRaw(request, rules, body)
        _refuseRequestDigests(request)
        self.objects.admit(body.length, FORM_OVERHEAD)
        upload = FormUpload(UPLOAD_FORMS[kind], _boundary(request), body.length)
        body.deliverBody(upload)
        try:
            await upload.fieldsReady()
            fields = upload.fields
            size = parseSize(fields["size"])
            self.objects.admit(size)
            new = NewObject(
                kind=kind,
                uuid=fields.get("uuid"),
                text={name: fields[name] for name in rules.text},
                blob=_formBlob(upload, size),
            )
        except BaseException:
            upload.stop()
            raise
        return _created(request, await self.objects.put(new, upload))

    async def _uploadRaw(self, request: IRequest, rules: Kind, body: RequestBody) -> bytes:
        parent = rules.parent
        args = {k.decode("utf-8", "replace"): v for k, v in request.args.items()}
        allowed = {"uuid"} | ({parent} if parent else set())
        unknown = sorted(set(args) - allowed)
        if unknown:
            raise APIError(
                400,
                f"unknown field {unknown[0]!r}: a {rules.name} upload takes"
                f" {' and '.join(sorted(allowed))}",
            )
        parentUUID = None
        if parent is not None:
            if parent not in args:
                raise APIError(
                    400,
                    f"missing required field {parent}:"
                    f" POST /{rules.name}?{parent}={{{parent} uuid}}",
                )
            parentUUID = parseUUID(args[parent][0].decode("utf-8", "replace"), parent)
        uuid = parseUUID(args["uuid"][0].decode("utf-8", "replace")) if "uuid" in args else None
        # Without a Content-Length (a chunked body), the size is the body's
        # end, and the maximum is enforced as it streams.
        self.objects.admit(body.length)
        expected = _expectedDigests(_requestHeaders(request, "repr-digest", "content-md5"))
        ctype: str | None = (request.getHeader(b"content-type") or b"").decode("latin-1")
        if ctype is not None and ctype.split(";")[0].strip().lower() in _MEANINGLESS_TYPES:
            ctype = None
        new = NewObject(
            kind=rules.name,
            uuid=uuid,
            parent=parentUUID,
            blob=IncomingBlob(body.length, expected, Label(ctype)),
        )
        return _created(request, await self.objects.put(new, RawSource(body)))

    @_authorized(app, "/<kind>/<uuid>", ["GET", "HEAD"])
    async def get(self, request: IRequest, kind: str, uuid: str) -> bytes:
        """An object's metadata, with its validators (C{ETag}, C{Last-Modified})."""
        stored = await self.objects.get(kind, parseUUID(uuid))
        describe(request, stored)
        if answerPreconditions(request, stored):
            return b""
        return _json(request, stored.asJSON())

    @_authorized(app, "/<kind>/<uuid>", ["DELETE"])
    async def delete(self, request: IRequest, kind: str, uuid: str) -> bytes:
        """Delete an object and its blob; answers with what was deleted."""
        uuid = parseUUID(uuid)
        current = await self.objects.current(kind, uuid)
        if preconditions(request, current) is not None:
            raise APIError(412, f"{kind} {uuid} is not the version this deletion was made for")
        return _json(request, (await self.objects.remove(kind, uuid)).asJSON())

    @_authorized(app, "/<kind>/<uuid>/blob", ["GET", "HEAD"])
    async def blob(self, request: IRequest, kind: str, uuid: str) -> Any:
        """
        An object's blob, whole or in ranges, with conditional requests;
        with redirects on, a GET the store can answer is sent there (307).
        """
        stored = await self.objects.get(kind, parseUUID(uuid))
        return await serveBlob(request, stored, self.objects, self.redirectLifetime)

    async def patch(self, request: IRequest, kind: str, uuid: str) -> bytes:
        """
        Change an object at once: rename it (C{uuid}), change its text
        fields, replace its blob; every field is optional.
        """
        current = await self.objects.current(kind, parseUUID(uuid))
        uuid = current.uuid
        if preconditions(request, current) is not None:
            raise APIError(412, f"{kind} {uuid} is not the version this change was made for")
        _refuseRequestDigests(request)
        body = _body(request)
        upload = FormUpload(PATCH_FORM, _boundary(request), body.length)
        body.deliverBody(upload)
        try:
            hasBlob = await upload.fieldsReady()
            fields = upload.fields
            blob = None
            if hasBlob:
                size = parseSize(fields["size"])
                self.objects.admit(size)
                blob = _formBlob(upload, size)
            change = Replacement(
                newUUID=fields.get("uuid"),
                text={name: fields[name] for name in TABLE[kind].text if name in fields},
                blob=blob,
            )
        except BaseException:
            upload.stop()
            raise
        return _created(request, await self.objects.replace(current, change, upload), 200)

    for _kind in (k.name for k in TABLE.values() if k.patchable):
        _authorized(
            app, f"/{_kind}/<uuid>", ["PATCH"], defaults={"kind": _kind}, endpoint=f"patch_{_kind}"
        )(patch)
    del _kind

    # Resumable uploads (tus 1.0 and the IETF draft): see _resumable.

    def _uploadsAPI(self) -> UploadsAPI:
        if self.uploads is None or not self.uploads.uploads.available:
            raise APIError(
                501, f"resumable uploads are not available on the {self.objects.blobs.name} store"
            )
        return self.uploads

    @_authorized(app, "/uploads", ["OPTIONS"])
    async def uploadOptions(self, request: IRequest) -> bytes:
        """What the resumable uploads support (tus discovery, the draft's limits)."""
        return self._uploadsAPI().options(request)

    @_authorized(app, "/uploads", ["POST"])
    async def createUpload(self, request: IRequest) -> Any:
        """A new resumable upload, maybe with its first bytes (or a tus final upload)."""
        return await self._uploadsAPI().create(request, request.morpheoUser)  # type: ignore[attr-defined]

    @_authorized(app, "/uploads/<uploadId>", ["HEAD"])
    async def uploadOffset(self, request: IRequest, uploadId: str) -> bytes:
        """Where an upload is: its offset, to resume from."""
        return await self._uploadsAPI().head(request, request.morpheoUser, uploadId)  # type: ignore[attr-defined]

    @_authorized(app, "/uploads/<uploadId>", ["PATCH"])
    async def appendUpload(self, request: IRequest, uploadId: str) -> bytes:
        """More bytes of an upload, from its offset."""
        return await self._uploadsAPI().patch(request, request.morpheoUser, uploadId)  # type: ignore[attr-defined]

    @_authorized(app, "/uploads/<uploadId>", ["DELETE"])
    async def cancelUpload(self, request: IRequest, uploadId: str) -> bytes:
        """Cancel an upload: what it wrote is removed, its uuid freed."""
        return await self._uploadsAPI().delete(request, request.morpheoUser, uploadId)  # type: ignore[attr-defined]

    # Errors: the domain's typed outcomes, and what Klein decides.

    @app.handle_errors(APIError)
    def _apiError(self, request: IRequest, failure: Failure) -> bytes:
        error: APIError = failure.value  # type: ignore[assignment]
        if isinstance(error, Unauthorized):
            request.setHeader(
                b"WWW-Authenticate", f'Basic realm="{error.realm}", charset="UTF-8"'.encode()
            )
        if error.retryAfter is not None:
            request.setHeader(b"Retry-After", b"%d" % error.retryAfter)
        return _json(request, {"error": error.message}, error.code)

    @app.handle_errors(*_REFUSALS)
    def _refused(self, request: IRequest, failure: Failure) -> bytes:
        """What the request caused, said as the domain layer says it."""
        error = failure.value
        status = next(code for kind, code in _REFUSALS.items() if isinstance(error, kind))
        body = _json(request, {"error": str(error)}, status)
        if status in _REASONS:
            request.setResponseCode(status, _REASONS[status])
        return body

    @app.handle_errors(BodyRefused)
    def _bodyRefused(self, request: IRequest, failure: Failure) -> bytes:
        """The channel cut the body (malformed, or too slow)."""
        error: BodyRefused = failure.value  # type: ignore[assignment]
        return _json(request, {"error": error.message}, error.code)

    @app.handle_errors(RangeNotSatisfiable)
    def _rangeError(self, request: IRequest, failure: Failure) -> bytes:
        size = failure.value.size  # type: ignore[union-attr]
        request.setHeader(b"Content-Range", f"bytes */{size}".encode())
        return _json(request, {"error": f"no requested range is within the {size} bytes"}, 416)

    @app.handle_errors(DatabaseError)
    def _databaseError(self, request: IRequest, failure: Failure) -> bytes:
        # The error's sentence is the client's; what the driver said was
        # logged, once, where it was caught (morpheo.metadata._postgres).
        if failure.check(ClaimLost):
            self._log.warn("{error}", error=str(failure.value))
        return _json(request, {"error": str(failure.value)}, 503)

    @app.handle_errors(BlobStoreError)
    def _storeError(self, request: IRequest, failure: Failure) -> bytes:
        store = self.objects.blobs
        error = failure.value
        if isinstance(error, BlobMissing):
            # A row without its blob: lost, or in another node's local
            # store.  The key stays in the log.
            self._log.error("the {store} blob store has {error}", store=store.name, error=error)
            message = f"the blob store ({store.name}) has no blob for {error.kind} {error.uuid}"
        else:
            # What failed (a path, a host, a key) is the log's: the client
            # learns which store, and that it is not its request's fault.
            self._log.failure("blob store failure", failure)
            message = f"the blob store ({store.name}) failed; try again later"
        return _json(request, {"error": message}, 502 if store.remote else 500)

    @app.handle_errors(NotFound)
    def _notFound(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"error": NO_ROUTE}, 404)

    @app.handle_errors(MethodNotAllowed)
    def _notAllowed(self, request: IRequest, failure: Failure) -> bytes:
        valid = failure.value.valid_methods or []  # type: ignore[union-attr]
        allowed = ", ".join(sorted(_servedMethods(request, valid)))
        if not allowed:
            return _json(request, {"error": NO_ROUTE}, 404)
        request.setHeader(b"Allow", allowed.encode())
        return _json(request, {"error": f"method not allowed here; allowed: {allowed}"}, 405)


def _servedMethods(request: IRequest, valid: list[str]) -> list[str]:
    """
    Of the methods werkzeug finds rules for at this path, those that serve
    it: C{/health} also fits C{/<kind>}, whose POST would answer that
    C{health} is no kind, so it is not allowed there.
    """
    mapper = IKleinRequest(request).mapper
    served = []
    for method in valid:
        try:
            _, args = mapper.match(method=method, return_rule=True)
        except HTTPException:
            continue
        if args.get("kind", KINDS[0]) in TABLE:
            served.append(method)
    return served
