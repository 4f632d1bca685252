# -*- test-case-name: tests.unit.test_client -*-
"""
The client's typed outcomes, each with the exit code the command ends with:
a script tells a missing object from a refused password, a busy uuid or a
corrupt download without reading the sentence.
"""

from __future__ import annotations

import json
from enum import IntEnum


class ExitCode(IntEnum):
    """What C{morpheo-storage-client} exits with (documented in the README)."""

    OK = 0
    #: A wrong command line, an unreadable file, or a request the service
    #: refused as malformed (400, 405, 413, 416...).
    USAGE = 1
    NOT_FOUND = 2
    #: The uuid is taken, the algo still has models, a condition failed (409, 412).
    CONFLICT = 3
    #: Missing or wrong credentials, or too many failed logins (401, 403, 429).
    AUTH = 4
    #: The service failed or could not be reached (5xx, network, timeout).
    UNAVAILABLE = 5
    #: The bytes' sha256 is not the one the service recorded.
    CHECKSUM = 6


class ClientError(Exception):
    """
    A request that did not succeed, with one sentence for a person (C{str})
    and the exit code of its kind.
    """

    exitCode: ExitCode = ExitCode.UNAVAILABLE

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status the service answered, if it answered.
        self.status = status


class UsageError(ClientError):
    """The command or the request is wrong: the service refused it, or would."""

    exitCode = ExitCode.USAGE


class NotFound(ClientError):
    exitCode = ExitCode.NOT_FOUND


class Conflict(ClientError):
    exitCode = ExitCode.CONFLICT


class Unauthorized(ClientError):
    exitCode = ExitCode.AUTH


class Unavailable(ClientError):
    """The service failed, or could not be reached in time."""

    exitCode = ExitCode.UNAVAILABLE


class ChecksumMismatch(ClientError):
    """What was read or written is not what the service recorded."""

    exitCode = ExitCode.CHECKSUM


_BY_STATUS: dict[int, type[ClientError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    412: Conflict,
    429: Unauthorized,
}


def errorFor(status: int, body: bytes) -> ClientError:
    """
    The outcome of an answer with an error status: its class from the
    status, its sentence the service's C{{"error": ...}} (or the status
    alone, for a body that is not that JSON, e.g. a proxy's page).
    """
    try:
        decoded = json.loads(body)
        message = str(decoded["error"])
    except (ValueError, KeyError, TypeError):
        message = f"the service answered {status}"
    if status == 401:
        message += " (give --user and --password, MORPHEO_STORAGE_USER and "
        message += "MORPHEO_STORAGE_PASSWORD, or a ~/.netrc entry for the host)"
    kind = _BY_STATUS.get(status)
    if kind is None:
        kind = Unavailable if status >= 500 or status == 408 else UsageError
    return kind(" ".join(message.split()), status)
