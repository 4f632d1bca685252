# -*- test-case-name: tests.integration.test_api -*-
"""
Upload bodies, read as streams: a multipart form whose text fields come
first and whose C{blob} is streamed to a blob writer, or a raw body streamed
whole to one.

Both are protocols for L{RequestBody.deliverBody}; the multipart syntax is
parsed by C{multipart.PushMultipartParser}, a sans-IO parser this module
feeds and reads events from.
"""

from __future__ import annotations

from typing import Any

from multipart import MultipartError, MultipartSegment, PushMultipartParser
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from zope.interface import implementer

from .._errors import APIError
from .._interfaces import IBlobSource, IBlobWriter
from .._observer import OneShotObserverList
from ._forms import (
    BLOB,
    FormSpec,
    checkBeforeBlob,
    checkFieldLength,
    checkFieldName,
    checkText,
)


@implementer(IBlobSource)
class FormUpload(Protocol):
    """
    Reads a C{multipart/form-data} body: text fields, then C{blob}, then the
    closing boundary.

    The handler waits for L{fieldsReady} (all text fields in and checked,
    with whether a blob follows), decides (claims the uuid, opens a writer),
    then calls L{streamTo} and waits for L{done}.  Until then the body
    is paused, so no blob byte is read before the handler accepts it.
    """

    transport: IPushProducer  # type: ignore[assignment]

    def __init__(self, spec: FormSpec, boundary: bytes, length: int | None) -> None:
        self.spec = spec
        self.fields: dict[str, str] = {}
        self._parser = PushMultipartParser(
            boundary, content_length=-1 if length is None else length, max_segment_count=64
        )
        self._state = "fields"
        self._field: str | None = None
        self._value: list[bytes] = []
        self._valueLength = 0
        self._held: list[bytes] = []
        self._writer: IBlobWriter | None = None
        self._bodyComplete = False
        self._fieldsReady: OneShotObserverList[bool] = OneShotObserverList()
        self._done: OneShotObserverList[None] = OneShotObserverList()
        #: The blob part's own headers, once it starts: its type, its file
        #: name and any digest its client stated.
        self.blobContentType: str | None = None
        self.blobFilename: str | None = None
        self.blobHeaders: dict[str, str] = {}

    def fieldsReady(self) -> Deferred[bool]:
        """Fires with whether a blob follows the fields, or fails with the
        L{APIError} for the first bad field."""
        return self._fieldsReady.whenFired()

    def done(self) -> Deferred[None]:
        """Fires when the whole body has been read and every blob byte
        written to the writer."""
        return self._done.whenFired()

    def streamTo(self, writer: IBlobWriter) -> None:
        if self._state == "failed":
            return  # done() tells why
        if self._state not in ("held", "after-held"):
            raise RuntimeError(f"no blob is waiting (state {self._state})")
        self._state = "blob" if self._state == "held" else "after-blob"
        self._writer = writer
        self.transport.resumeProducing()
        writer.registerProducer(self.transport, True)
        held, self._held = self._held, []
        try:
            for data in held:
                writer.write(data)
        except Exception as e:
            self._fail(e)
            return
        self._maybeDone()

    def stop(self) -> None:
        """The handler gives up: read no more (the rest is discarded)."""
        if self._state != "failed":
            self._state = "failed"
            self._unregister()
            self.transport.stopProducing()

    # Protocol

    def dataReceived(self, data: bytes) -> None:
        if self._state == "failed":
            return
        try:
            for event in self._parser.parse(data):
                self._event(event)
        except MultipartError as e:
            self._fail(APIError(400, f"the multipart body is malformed: {e}"))
        except Exception as e:
            self._fail(e)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._state == "failed":
            return
        if not reason.check(ResponseDone):
            self._fail(reason)
            return
        self._bodyComplete = True
        try:
            self._parser.close()
        except MultipartError:
            self._fail(APIError(400, "the multipart body ends before its closing boundary"))
            return
        if self._state == "fields":
            try:
                checkBeforeBlob(self.spec, self.fields, hasBlob=False)
            except APIError as e:
                self._fail(e)
                return
            self._state = "complete"
            self._fieldsReady.fireIfNotFired(False)
        self._maybeDone()

    # Parser events

    def _event(self, event: MultipartSegment | bytes | bytearray | None) -> None:
        if isinstance(event, MultipartSegment):
            self._segmentStarts(event)
        elif event is None:
            self._segmentEnds()
        elif self._state == "blob":
            assert self._writer is not None
            self._writer.write(bytes(event))
        elif self._state == "held":
            self._held.append(bytes(event))
        else:
            assert self._field is not None
            self._valueLength += len(event)
            # A character is at most four bytes: refuse early, check exactly later.
            checkFieldLength(self._field, self._valueLength // 4)
            self._value.append(bytes(event))

    def _segmentStarts(self, segment: MultipartSegment) -> None:
        if self._state != "fields":
            raise APIError(
                400, f"field {segment.name[:80]!r} follows blob: blob must be the last field"
            )
        checkFieldName(self.spec, segment.name, self.fields)
        if segment.name == BLOB:
            checkBeforeBlob(self.spec, self.fields, hasBlob=True)
            for what, text in (
                ("Content-Type", segment.content_type),
                ("filename", segment.filename),
            ):
                checkText(f"the blob's {what}", text or "")
            self.blobContentType = segment.content_type
            self.blobFilename = segment.filename
            self.blobHeaders = {k.lower(): v for k, v in segment.headerlist}
            # Hold the body until the handler has accepted the fields.
            self._state = "held"
            self.transport.pauseProducing()
            self._fieldsReady.fireIfNotFired(True)
        else:
            self._field = segment.name
            self._value, self._valueLength = [], 0

    def _segmentEnds(self) -> None:
        if self._state in ("held", "blob"):
            self._state = "after-" + self._state
            return
        assert self._field is not None
        try:
            value = b"".join(self._value).decode("utf-8")
        except UnicodeDecodeError:
            raise APIError(400, f"field {self._field!r} is not valid UTF-8") from None
        checkFieldLength(self._field, len(value))
        self.fields[self._field] = value
        self._field = None

    def _maybeDone(self) -> None:
        if self._state == "after-held":
            return  # waiting for streamTo
        if self._bodyComplete and self._state in ("after-blob", "complete") and not self._held:
            self._unregister()
            self._done.fireIfNotFired(None)

    def _unregister(self) -> None:
        if self._writer is not None:
            self._writer.unregisterProducer()

    def _fail(self, reason: BaseException | Failure) -> None:
        f = reason if isinstance(reason, Failure) else Failure(reason)
        self._state = "failed"
        self._unregister()
        if not self._bodyComplete:
            self.transport.stopProducing()
        self._fieldsReady.fireIfNotFired(f)
        self._done.fireIfNotFired(f)


class RawUpload(Protocol):
    """Streams a whole request body into a blob writer."""

    transport: IPushProducer  # type: ignore[assignment]

    def __init__(self, writer: IBlobWriter) -> None:
        self._writer = writer
        self._done: OneShotObserverList[None] = OneShotObserverList()
        self._failed = False

    def done(self) -> Deferred[None]:
        return self._done.whenFired()

    def connectionMade(self) -> None:
        self._writer.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self._writer.write(data)
        except Exception:
            # SizeMismatch among others: the routes say which.
            self._fail(Failure(), stop=True)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._failed:
            return
        self._writer.unregisterProducer()
        if reason.check(ResponseDone):
            self._done.fireIfNotFired(None)
        else:
            self._fail(reason, stop=False)

    def stop(self) -> None:
        if not self._failed:
            self._failed = True
            self._writer.unregisterProducer()
            self.transport.stopProducing()

    def _fail(self, reason: Failure, stop: bool) -> None:
        self._failed = True
        self._writer.unregisterProducer()
        if stop:
            self.transport.stopProducing()
        self._done.fireIfNotFired(reason)


@implementer(IBlobSource)
class RawSource:
    """A whole request body as a blob source: read once the upload is accepted."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self._upload: RawUpload | None = None

    def streamTo(self, writer: IBlobWriter) -> None:
        self._upload = RawUpload(writer)
        self._body.deliverBody(self._upload)

    def done(self) -> Deferred[None]:
        assert self._upload is not None, "streamTo comes first"
        return self._upload.done()

    def stop(self) -> None:
        # Before streamTo the body was never read: nothing to stop.
        if self._upload is not None:
            self._upload.stop()
