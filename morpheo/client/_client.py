# -*- test-case-name: tests.unit.test_client,tests.integration.test_client -*-
"""
L{StorageClient}: the service's routes as Python calls, synchronous (it
runs outside any reactor), on httpx.

Memory stays flat whatever the blob's size: an upload streams from its
file, 64 KiB at a time, and a download streams to a C{.part} file beside
its destination, renamed in only once its sha256 is the one the service
recorded; a download cut short resumes where it stopped (C{Range}, with
C{If-Range} so that a blob changed meanwhile starts over), by itself up to
C{retries} times and at the next call after that.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

import httpx

from .. import __version__
from .._kinds import KINDS, TABLE
from ._errors import ChecksumMismatch, ClientError, Unavailable, UsageError, errorFor
from ._progress import IProgress, NoProgress

#: What one read from a file or from the network moves.
BLOCK = 64 * 1024
#: The bytes a resumable upload sends per PATCH, unless told otherwise.
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
#: Files this large or larger go through /uploads unless told otherwise.
DEFAULT_RESUMABLE_THRESHOLD = 64 * 1024 * 1024
#: Answers worth asking again for: the service or a proxy before it is busy.
_TRANSIENT = frozenset({502, 503, 504})
TUS_VERSION = "1.0.0"

JSON = dict[str, Any]


class _Reading:
    """
    A file read once from its start, its sha256 and progress kept as it
    goes; what httpx's multipart encoder reads (C{read}, C{seek}, and
    C{fileno} for the length).
    """

    def __init__(self, file: IO[bytes], progress: IProgress) -> None:
        self._file = file
        self._progress = progress
        self.size = os.fstat(file.fileno()).st_size
        self.done = 0
        self.digest = hashlib.sha256()

    def fileno(self) -> int:
        return self._file.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        if position == 0:
            self.done = 0
            self.digest = hashlib.sha256()
        return position

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.digest.update(data)
        self.done += len(data)
        self._progress.update(self.done)
        return data

    def blocks(self, limit: int | None = None) -> Iterator[bytes]:
        """The file from where it is, a block at a time, C{limit} bytes at most."""
        left = self.size if limit is None else limit
        while left > 0:
            data = self.read(min(BLOCK, left))
            if not data:
                return
            left -= len(data)
            yield data


class _PartFile:
    """
    A download's C{.part} file, open for appending: how much of the blob it
    has and the sha256 of that, and the sha256 and size the whole should
    have.
    """

    def __init__(self, file: IO[bytes], expected: str, size: int) -> None:
        self.file = file
        self.expected = expected
        self.size = size
        self.digest = hashlib.sha256()
        file.seek(0)
        while data := file.read(1024 * 1024):
            self.digest.update(data)
        self.offset = file.tell()
        if self.offset > size:
            self.restart(None, None)

    def restart(self, expected: str | None, size: str | None) -> None:
        """From the start again, for a blob of C{expected} sha256 and C{size} if known."""
        self.file.seek(0)
        self.file.truncate(0)
        self.offset = 0
        self.digest = hashlib.sha256()
        self.expected = expected or self.expected
        if size is not None and size.isdigit():
            self.size = int(size)

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.offset += len(data)


class StorageClient:
    """
    The Morpheo Storage service at C{url} (its base: C{http://host:8000},
    or where a host mounts it), as the user C{auth}.

    @param timeout: seconds any network operation (connecting, a read, a
        write) may wait.
    @param retries: how many times a read (metadata, lists, a download,
        which then resumes) or a resumable upload's chunk is tried again
        after a network failure or a 502, 503 or 504; connections are
        retried as often for every request.
    @param retryDelay: the first wait before trying again, doubled each time.
    @param chunkSize: the bytes a resumable upload sends per request.
    @param resumableThreshold: the size from which an upload is resumable
        unless told otherwise.
    @param transport: httpx's transport (tests, proxies); a plain
        connection pool by default.
    """

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        retryDelay: float = 1.0,
        chunkSize: int = DEFAULT_CHUNK_SIZE,
        resumableThreshold: int = DEFAULT_RESUMABLE_THRESHOLD,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.retryDelay = retryDelay
        self.chunkSize = chunkSize
        self.resumableThreshold = resumableThreshold
        self._sleep: Callable[[float], None] = time.sleep
        self._http = httpx.Client(
            auth=auth,
            timeout=httpx.Timeout(timeout),
            transport=transport or httpx.HTTPTransport(retries=retries),
            headers={"User-Agent": f"morpheo-storage-client/{__version__}"},
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> StorageClient:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    # The routes.

    def show(self, kind: str, uuid: str) -> JSON:
        """One object's metadata."""
        return self._json(self._call("GET", _objectPath(kind, uuid), retry=True))

    def list(
        self,
        kind: str,
        *,
        name: str | None = None,
        algo: str | None = None,
        limit: int | None = None,
        pageSize: int = 100,
    ) -> Iterator[JSON]:
        """
        The objects of C{kind}, newest first, C{limit} at most (all without
        it), following the pages' C{next} (a cursor: nothing lost or
        repeated while uploads arrive).
        """
        query: dict[str, str] = {}
        if name is not None:
            if not TABLE[_checkKind(kind)].nameFilter:
                raise UsageError(f"{kind} lists do not filter by name")
            query["name"] = name
        if algo is not None:
            if TABLE[_checkKind(kind)].parent != "algo":
                raise UsageError(f"{kind} lists do not filter by algo")
            query["algo"] = algo
        if pageSize < 1 or (limit is not None and limit < 0):
            raise UsageError("the page size must be positive and the limit not negative")
        left = limit
        size = min(pageSize, 1000) if left is None else min(pageSize, 1000, max(left, 1))
        query["limit"] = str(size)
        path: str | None = f"/{_checkKind(kind)}?{urlencode(query)}"
        while path is not None and (left is None or left > 0):
            page = self._json(self._call("GET", path, retry=True))
            for item in page["items"]:
                if left is not None:
                    if left == 0:
                        return
                    left -= 1
                yield item
            following = page.get("next")
            path = self._given(following) if following else None

    def delete(self, kind: str, uuid: str) -> JSON:
        """Remove an object and its blob; its metadata as it was."""
        return self._json(self._call("DELETE", _objectPath(kind, uuid)))

    def upload(
        self,
        kind: str,
        path: str,
        *,
        uuid: str | None = None,
        name: str | None = None,
        description: str | None = None,
        algo: str | None = None,
        sha256: str | None = None,
        resumable: bool | None = None,
        progress: IProgress | None = None,
    ) -> JSON:
        """
        Store the file at C{path} as a new object of C{kind}; its metadata.

        The fields are the kind's (C{name} for an algo, C{name} and
        C{description} for a problem, C{algo} for a model); C{sha256}, if
        given, is checked by the service before it keeps anything.  With
        C{resumable} (by default, for files of C{resumableThreshold} bytes
        or more), the file goes through C{/uploads} (tus 1.0) in
        C{chunkSize} pieces, each retried from where the service has it,
        if the service offers that; otherwise in one request.  The answer's
        sha256 is checked against the bytes sent (L{ChecksumMismatch}).
        """
        spec = TABLE[_checkKind(kind)]
        texts = _texts(kind, name=name, description=description, patching=False)
        if spec.parent is None and algo is not None:
            raise UsageError(f"{_a(kind)} has no --algo")
        if spec.parent is not None and algo is None:
            raise UsageError(f"{_a(kind)} needs --{spec.parent}")
        progress = progress or NoProgress()
        with _openForReading(path) as file:
            reading = _Reading(file, progress)
            progress.start(os.path.basename(path), reading.size)
            try:
                answer = None
                if resumable is None:
                    resumable = reading.size >= self.resumableThreshold
                if resumable:
                    fields = {"uuid": uuid, **texts, "algo": algo}
                    answer = self._uploadResumable(kind, reading, path, fields, sha256)
                if answer is None:
                    if spec.rawBody:
                        answer = self._postRaw(kind, reading, uuid, algo, sha256)
                    else:
                        form = {**({"uuid": uuid} if uuid else {}), **texts}
                        answer = self._sendForm("POST", f"/{kind}", form, reading, path, sha256)
            finally:
                progress.finish()
            _checkAnswer(answer, reading)
            return answer

    def patch(
        self,
        kind: str,
        uuid: str,
        *,
        newUuid: str | None = None,
        name: str | None = None,
        description: str | None = None,
        path: str | None = None,
        sha256: str | None = None,
        progress: IProgress | None = None,
    ) -> JSON:
        """
        Change an object (a problem): rename it (C{newUuid}), change its
        text fields, replace its blob with the file at C{path}; all at once.
        """
        spec = TABLE[_checkKind(kind)]
        if not spec.patchable:
            raise UsageError(f"{_a(kind)} cannot be changed (only {_patchable()})")
        form = {**({"uuid": newUuid} if newUuid else {}), **_texts(kind, name, description, True)}
        target = _objectPath(kind, uuid)
        if path is None:
            if sha256 is not None:
                raise UsageError("--sha256 is the new blob's: give the file too")
            if not form:
                raise UsageError("nothing to change: give a new uuid, a field or a file")
            return self._json(self._call("PATCH", target, files=_formFields(form)))
        progress = progress or NoProgress()
        with _openForReading(path) as file:
            reading = _Reading(file, progress)
            progress.start(os.path.basename(path), reading.size)
            try:
                answer = self._sendForm("PATCH", target, form, reading, path, sha256)
            finally:
                progress.finish()
            _checkAnswer(answer, reading)
            return answer

    def download(
        self, kind: str, uuid: str, path: str, *, progress: IProgress | None = None
    ) -> JSON:
        """
        Save an object's blob at C{path}; its metadata.

        The bytes go to C{path + ".part"} first, and are renamed in once
        their sha256 is the service's.  A C{.part} file already there (a
        download cut short) is resumed; one whose bytes turn out wrong is
        removed and L{ChecksumMismatch} raised, nothing left at C{path}.
        """
        meta = self.show(kind, uuid)
        progress = progress or NoProgress()
        partPath = path + ".part"
        try:
            file = open(partPath, "ab+")
        except OSError as e:
            raise UsageError(f"cannot write {partPath}: {e.strerror}") from None
        with file:
            part = _PartFile(file, str(meta["sha256"]), int(meta["size"]))
            label = os.path.basename(path)
            progress.start(label, part.size, part.offset)
            try:
                self._fetchBlob(_objectPath(kind, uuid) + "/blob", part, progress, label)
            finally:
                progress.finish()
                file.flush()
                os.fsync(file.fileno())
        if part.digest.hexdigest() != part.expected:
            os.unlink(partPath)
            raise ChecksumMismatch(
                f"the downloaded bytes have sha256 {part.digest.hexdigest()}, not "
                f"{part.expected} as the service recorded: {partPath} (resumed from an "
                "earlier download?) was removed; download again to start over"
            )
        os.replace(partPath, path)
        return meta

    # Transfers.

    def _fetchBlob(self, target: str, part: _PartFile, progress: IProgress, label: str) -> None:
        """
        Append the blob to C{part} until it is whole, trying again from
        where it stopped after a failure.
        """
        attempt = 0
        while True:
            headers = {}
            if part.offset > 0:
                headers = {"Range": f"bytes={part.offset}-", "If-Range": f'"{part.expected}"'}
            try:
                # A service with --redirect-downloads sends the bytes from its
                # store: httpx drops the credentials when it follows there.
                with self._http.stream(
                    "GET", self._resolve(target), headers=headers, follow_redirects=True
                ) as response:
                    status = response.status_code
                    if status == 416 and part.offset == part.size:
                        return
                    if status in (200, 206):
                        if status == 200 or not _startsAt(response, part.offset):
                            # The whole blob, anew: it changed, or this is its start.
                            part.restart(_etag(response), response.headers.get("content-length"))
                            progress.start(label, part.size)
                        for data in response.iter_bytes():
                            part.write(data)
                            progress.update(part.offset)
                        return
                    response.read()
                    error = errorFor(status, response.content)
                    if status not in _TRANSIENT:
                        raise error
            except httpx.ConnectError as e:
                # The transport has tried connecting again already.
                raise _unreachable(self.url, e) from None
            except httpx.TransportError as e:
                error = _unreachable(self.url, e)
            if attempt >= self.retries:
                raise error
            self._wait(attempt)
            attempt += 1

    def _sendForm(
        self,
        method: str,
        target: str,
        form: Mapping[str, str],
        reading: _Reading,
        path: str,
        sha256: str | None,
    ) -> JSON:
        """A multipart form: the text fields, C{size}, C{sha256}, then the blob last."""
        fields = {**form, "size": str(reading.size)}
        if sha256 is not None:
            fields["sha256"] = sha256
        files: list[tuple[str, Any]] = _formFields(fields)
        files.append(("blob", (os.path.basename(path), reading)))
        return self._json(self._call(method, target, files=files))

    def _postRaw(
        self, kind: str, reading: _Reading, uuid: str | None, algo: str | None, sha256: str | None
    ) -> JSON:
        """A model: the raw body, its algo (and uuid) in the query."""
        query = {"algo": algo or "", **({"uuid": uuid} if uuid else {})}
        headers = {"Content-Length": str(reading.size)}
        if sha256 is not None:
            headers["Repr-Digest"] = f"sha-256=:{_b64digest(sha256)}:"
        return self._json(
            self._call(
                "POST", f"/{kind}?{urlencode(query)}", content=reading.blocks(), headers=headers
            )
        )

    def _uploadResumable(
        self,
        kind: str,
        reading: _Reading,
        path: str,
        fields: Mapping[str, str | None],
        sha256: str | None,
    ) -> JSON | None:
        """
        The file through C{/uploads} (tus 1.0: a POST that creates the
        upload, PATCHes that append from the offset the service has, a HEAD
        to learn it after a failure); L{None} if the service has no
        C{/uploads}, for the caller to send the file in one request.
        """
        offered = self._call("OPTIONS", "/uploads", retry=True, check=False)
        if TUS_VERSION not in offered.headers.get("tus-version", ""):
            return None
        meta = {"kind": kind, "filename": os.path.basename(path), **fields, "sha256": sha256}
        tus = {"Tus-Resumable": TUS_VERSION}
        created = self._call(
            "POST",
            "/uploads",
            headers={
                **tus,
                "Upload-Length": str(reading.size),
                "Upload-Metadata": ",".join(
                    f"{key} {base64.b64encode(value.encode()).decode()}"
                    for key, value in meta.items()
                    if value is not None
                ),
            },
        )
        location = created.headers.get("location")
        resource = created.headers.get("morpheo-resource")
        if not location or not resource:
            raise Unavailable("the service's /uploads gave no Location or Morpheo-Resource")
        upload = self._given(location)
        offset, attempt = 0, 0
        while offset < reading.size:
            try:
                if reading.done != offset:
                    # The service has fewer bytes than were read: read them again.
                    reading.seek(0)
                    for _ in reading.blocks(offset):
                        pass
                length = min(self.chunkSize, reading.size - offset)
                answer = self._http.patch(
                    upload,
                    content=reading.blocks(length),
                    headers={
                        **tus,
                        "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                        "Content-Length": str(length),
                    },
                )
                if answer.status_code == 204:
                    offset = int(answer.headers["upload-offset"])
                    attempt = 0
                    continue
                error = errorFor(answer.status_code, answer.content)
                if answer.status_code not in _TRANSIENT | {409, 423}:
                    raise error
            except httpx.TransportError as e:
                error = _unreachable(self.url, e)
            except (KeyError, ValueError):
                error = Unavailable("the service's /uploads answered without a valid Upload-Offset")
            if attempt >= self.retries:
                raise error
            self._wait(attempt)
            attempt += 1
            head = self._call("HEAD", upload, headers=tus, retry=True)
            try:
                offset = int(head.headers["upload-offset"])
            except (KeyError, ValueError):
                raise Unavailable("the service's /uploads gave no Upload-Offset") from None
        return self._json(self._call("GET", self._given(resource), retry=True))

    # Plumbing.

    def _resolve(self, path: str) -> str:
        """
        The URL of a route's path, under the base URL, or of a URL the
        service gave, never on another host (the credentials go with it).
        """
        parts = urlsplit(path)
        base = urlsplit(self.url)
        if parts.scheme or parts.netloc:
            if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
                raise Unavailable("the service named an address on another host; not followed")
            return path
        return self.url + path

    def _given(self, path: str) -> str:
        """
        The URL of a path the service gave (an upload's C{Location} or
        C{Morpheo-Resource}, a list's C{next}).  A service mounted under a
        prefix gives its paths under it, which the base URL ends with; a
        proxy in front may add a prefix of its own: the segments the base
        URL ends with and the path begins with are said once.
        """
        parts = urlsplit(path)
        if parts.scheme or parts.netloc:
            return self._resolve(path)
        base = urlsplit(self.url)
        ours = [s for s in base.path.split("/") if s]
        given = parts.path.split("/")[1:]
        for overlap in range(min(len(ours), len(given)), 0, -1):
            if ours[-overlap:] == given[:overlap]:
                prefix = "".join("/" + s for s in ours[:-overlap])
                return f"{base.scheme}://{base.netloc}{prefix}{path}"
        return self.url + path

    def _call(
        self, method: str, path: str, *, retry: bool = False, check: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """
        One request, read whole (small answers only); an error status as
        its L{ClientError} (unless not C{check}); tried again after a
        network failure or a transient status if C{retry}.
        """
        attempt = 0
        while True:
            try:
                response = self._http.request(method, self._resolve(path), **kwargs)
            except httpx.ConnectError as e:
                # The transport has tried connecting again already.
                raise _unreachable(self.url, e) from None
            except httpx.TransportError as e:
                failure: ClientError = _unreachable(self.url, e)
            else:
                if response.is_success or not check:
                    return response
                failure = errorFor(response.status_code, response.content)
                if response.status_code not in _TRANSIENT:
                    raise failure
            if not retry or attempt >= self.retries:
                raise failure
            self._wait(attempt)
            attempt += 1

    def _wait(self, attempt: int) -> None:
        self._sleep(min(self.retryDelay * 2**attempt, 30.0))

    @staticmethod
    def _json(response: httpx.Response) -> JSON:
        try:
            decoded = response.json()
        except ValueError:
            raise Unavailable(f"the service answered {response.status_code} without JSON") from None
        if not isinstance(decoded, dict):
            raise Unavailable("the service answered JSON that is not an object")
        return decoded


def _checkKind(kind: str) -> str:
    if kind not in TABLE:
        raise UsageError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    return kind


def _a(kind: str) -> str:
    """C{"an algo"}, C{"a model"}."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _patchable() -> str:
    return ", ".join(f"{k.name}s" for k in TABLE.values() if k.patchable)


def _objectPath(kind: str, uuid: str) -> str:
    return f"/{_checkKind(kind)}/{quote(uuid, safe='')}"


def _texts(kind: str, name: str | None, description: str | None, patching: bool) -> dict[str, str]:
    """The kind's text fields from those given: all of them for an upload, any for a change."""
    given = {"name": name, "description": description}
    wanted = TABLE[kind].text
    for field, value in given.items():
        if value is not None and field not in wanted:
            raise UsageError(f"{_a(kind)} has no --{field}")
    if not patching:
        for field in wanted:
            if given.get(field) is None:
                raise UsageError(f"{_a(kind)} needs --{field}")
    return {field: value for field in wanted if (value := given.get(field)) is not None}


def _formFields(fields: Mapping[str, str]) -> list[tuple[str, Any]]:
    """
    Text fields as multipart parts without a file name, in order (httpx's
    C{data=} would come after nothing else; the blob must be last).
    """
    return [(key, (None, value)) for key, value in fields.items()]


def _openForReading(path: str) -> IO[bytes]:
    try:
        file = open(path, "rb")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if not os.path.isfile(path):
        file.close()
        raise UsageError(f"{path} is not a regular file")
    return file


def _checkAnswer(answer: JSON, reading: _Reading) -> None:
    """The service recorded the sha256 of the bytes sent, or the transfer was corrupted."""
    sent = reading.digest.hexdigest()
    if reading.done == reading.size and answer.get("sha256") not in (None, sent):
        raise ChecksumMismatch(
            f"the service recorded sha256 {answer['sha256']} for {answer.get('uuid')}, "
            f"but the bytes sent have {sent} (did the file change while it was sent?)"
        )


def _b64digest(hexDigest: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(hexDigest)).decode()
    except ValueError:
        raise UsageError(f"--sha256 is not a hex digest: {hexDigest!r}") from None


def _etag(response: httpx.Response) -> str | None:
    tag = str(response.headers.get("etag", "")).strip()
    if tag.startswith('"') and tag.endswith('"') and len(tag) == 66:
        return tag[1:-1]
    return None


def _startsAt(response: httpx.Response, offset: int) -> bool:
    """A 206 is the bytes from C{offset} on (C{Content-Range: bytes N-...})."""
    contentRange = str(response.headers.get("content-range", ""))
    return contentRange.startswith(f"bytes {offset}-")


def _unreachable(url: str, error: httpx.TransportError) -> Unavailable:
    reason = str(error) or type(error).__name__
    return Unavailable(f"cannot reach the service at {url}: {' '.join(reason.split())}")
