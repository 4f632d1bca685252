# -*- test-case-name: tests.unit.test_client -*-
"""
Where the client finds the service and its credentials: the command line,
else the environment (C{MORPHEO_STORAGE_URL}, C{MORPHEO_STORAGE_USER},
C{MORPHEO_STORAGE_PASSWORD}), else the URL's own C{user:password@}, else
the C{~/.netrc} entry of the URL's host, as curl and git do.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from attrs import frozen

from ._errors import UsageError

#: Where a service started as the README says listens.
DEFAULT_URL = "http://localhost:8000"


@frozen
class Credentials:
    """The service's base URL (no credentials in it) and the Basic login, if any."""

    url: str
    user: str | None = None
    password: str | None = None

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.user is None:
            return None
        return (self.user, self.password or "")


def findCredentials(
    url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    environ: Mapping[str, str] | None = None,
    netrcPath: str | None = None,
) -> Credentials:
    """
    The URL and login to use, each from the first place that gives it (see
    the module's docstring).  C{netrcPath} defaults to C{$NETRC}, else
    C{~/.netrc}; a missing file is no login, a malformed one a
    L{UsageError}.
    """
    environ = os.environ if environ is None else environ
    url = url or environ.get("MORPHEO_STORAGE_URL") or DEFAULT_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"the service's URL must be http:// or https://, not {url!r}")
    user = user if user is not None else environ.get("MORPHEO_STORAGE_USER")
    password = password if password is not None else environ.get("MORPHEO_STORAGE_PASSWORD")
    if user is None and parts.username is not None:
        user = unquote(parts.username)
        if password is None and parts.password is not None:
            password = unquote(parts.password)
    if user is None or password is None:
        found = _fromNetrc(parts.hostname, netrcPath or environ.get("NETRC"))
        if found is not None:
            login, secret = found
            # What was given stays: the file fills in only what is missing.
            if user is None:
                user = login
                password = secret if password is None else password
            elif user == login and password is None:
                password = secret
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return Credentials(base, user, password)


def _fromNetrc(host: str, path: str | None) -> tuple[str, str] | None:
    """The login and password of C{host} (or the C{default} entry) in a netrc file."""
    path = path or os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.isfile(path):
        return None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if entry is None:
        return None
    login, _, secret = entry
    return (login, secret or "")
