# -*- test-case-name: tests.integration.test_blobstore_contract -*-
"""
The contracts between the web layer and the parts it drives.

Every blob store (local disk, in-memory, S3, Google Cloud Storage) provides
L{IBlobStore}; the routes never know which one they talk to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IConsumer
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from ._types import BlobInfo


class IBlobWriter(IConsumer):
    """
    One blob being written.

    Bytes arrive through C{write}; a push producer registered with
    C{registerProducer} is paused while the writer's bounded buffer is full
    and resumed when it drains, which is how the socket stops being read
    when the store is slower than the client.  Nothing is visible under the
    key until L{finish} has fired.
    """

    key = Attribute("The key the blob is committed under.")

    def finish() -> Deferred[BlobInfo]:
        """
        Flush, check that exactly the announced size arrived, and commit the
        blob atomically under its key.

        @return: fires with the blob's L{BlobInfo}; on any failure the blob
            is gone and the L{Deferred} fails.
        """

    def abort() -> Deferred[None]:
        """
        Drop everything written so far; nothing is left behind.  Safe to
        call at any time and more than once, also after a failed L{finish}.
        """


class IBlobStore(Interface):
    """
    Where blobs live.  Keys are opaque relative paths such as
    C{"problem/1f01d777-....3f2a91c0"}.
    """

    name = Attribute("A short name for logs and errors, e.g. C{'local'}.")

    def writer(key: str, size: int) -> IBlobWriter:
        """
        Start writing a blob of exactly C{size} bytes under C{key}.
        """

    def produce(
        key: str, consumer: IConsumer, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        """
        Stream C{length} bytes of the blob (all of it when L{None}) starting
        at C{offset} into C{consumer}, registering a push producer with it so
        that the consumer's pauses stop the reading.

        @return: fires when the last byte has been written to C{consumer}
            (the producer is then unregistered); fails with
            L{BlobNotFound} if there is no such blob.  Cancelling it stops
            the transfer.
        """

    def delete(key: str) -> Deferred[None]:
        """
        Remove a blob.  Deleting a missing key is not an error.
        """

    def check() -> Deferred[None]:
        """
        Fail if the store cannot be used right now (for readiness checks and
        start-up).
        """


class IAbandonableBlobStore(IBlobStore):
    """
    A blob store where an unfinished write leaves more than L{IBlobStore.delete}
    removes (an S3 multipart upload): what a dead process left under a key
    is removed with L{abandon}.
    """

    def abandon(key: str) -> Deferred[None]:
        """
        Remove everything a write under C{key} may have left: the blob if it
        was committed, any unfinished upload to it.  Removing nothing is not
        an error.
        """


class ISweepableBlobStore(IBlobStore):
    """
    A blob store that can list what it holds, so that what a crash left
    behind (temporary files, blobs no row points to) can be swept.
    """

    def sweepTemporary(olderThan: float = 0.0) -> Deferred[list[str]]:
        """
        Remove unfinished writes last touched more than C{olderThan}
        seconds ago; fires with what was removed.
        """

    def listKeys(olderThan: float = 0.0) -> Deferred[list[str]]:
        """
        The keys of committed blobs last modified more than C{olderThan}
        seconds ago.
        """
