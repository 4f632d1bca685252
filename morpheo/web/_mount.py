# -*- test-case-name: tests.unit.test_mount,tests.integration.test_embedding -*-
"""
Where the storage routes stand in a host's resource tree.  The paths the
service gives out (an upload's C{Location}, C{Morpheo-Resource}, a list's
C{next}) are under the mount, so that a client of a host that serves the
storage under C{/storage/} follows them there.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from twisted.web.iweb import IRequest

#: What a path segment may hold as it is (RFC 3986 pchar, and the
#: percent sign of what is already encoded).
_PATH_CHARACTERS = "!$&'()*+,;=:@-._~%"


def noteMount(request: IRequest) -> None:
    """Keep on C{request} the path its storage resource was reached by (its
    C{prepath} as that resource renders it), spelled as the client spelled
    it in the request's target."""
    count = len(request.prepath or [])
    while count and not request.prepath[count - 1]:
        count -= 1
    if not count:
        # At the site's root, as most requests are: nothing to read.
        request.morpheoMount = ""  # type: ignore[attr-defined]
        return
    segments = urlsplit(request.uri).path.split(b"/")[1 : 1 + count]
    request.morpheoMount = "".join(  # type: ignore[attr-defined]
        "/" + quote(s, safe=_PATH_CHARACTERS) for s in segments
    )


def mounted(request: IRequest, path: str) -> str:
    """C{path}, an absolute path of the routes, as the client reaches it."""
    return getattr(request, "morpheoMount", "") + path


__all__ = ["mounted", "noteMount"]
