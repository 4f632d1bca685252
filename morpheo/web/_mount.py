# -*- test-case-name: tests.unit.test_mount,tests.integration.test_embedding -*-
"""
Where the storage routes stand in a host's resource tree.  The paths the
service gives out (an upload's C{Location}, C{Morpheo-Resource}, a list's
C{next}) are under the mount, so that a client of a host that serves the
storage under C{/storage/} follows them there.
"""

from __future__ import annotations

from urllib.parse import quote

from twisted.web.iweb import IRequest


def noteMount(request: IRequest) -> None:
    """Keep on C{request} the path its storage resource was reached by (its
    C{prepath} as that resource renders it)."""
    segments = list(request.prepath or [])
    while segments and not segments[-1]:
        segments.pop()
    request.morpheoMount = "".join(  # type: ignore[attr-defined]
        "/" + quote(s.decode("utf-8", "replace"), safe="") for s in segments
    )


def mounted(request: IRequest, path: str) -> str:
    """C{path}, an absolute path of the routes, as the client reaches it."""
    return getattr(request, "morpheoMount", "") + path


__all__ = ["mounted", "noteMount"]
