# -*- test-case-name: tests.unit.test_reading,tests.unit.test_lists,tests.unit.test_orphans -*-
"""
The kinds of object the service stores, and the rules of each: the one
table that the upload forms, the JSON, the SQL and the routes all read.

Adding a text field to a kind is one line here (and a column in a
migration): the forms accept it, the JSON shows it, the metadata stores
store it.  The shape of the keys their blobs are stored under is here too:
the stores list, and the sweep touches, only keys of that shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from attrs import frozen


@frozen
class Kind:
    """
    What one kind of object carries besides its blob.

    @ivar text: the text fields a client gives at upload, all required, in
        the order the JSON shows them.
    @ivar nameFilter: lists of this kind filter by name prefix (C{?name=}).
    @ivar parent: the kind an object of this kind belongs to (a model's
        algo): named at upload (C{?algo=}), shown in the JSON, filterable
        in lists, and it cannot be deleted while children use it.
    @ivar rawBody: uploads are the raw request body (the blob alone), not a
        multipart form.
    @ivar patchable: C{PATCH /{kind}/{uuid}} renames it, changes its text
        fields and replaces its blob.
    """

    name: str
    text: tuple[str, ...] = ()
    nameFilter: bool = False
    parent: str | None = None
    rawBody: bool = False
    patchable: bool = False


#: Every kind, by name, in the order the API lists them.
TABLE: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("algo", text=("name",), nameFilter=True),
        Kind("data"),
        Kind("model", parent="algo", rawBody=True),
        Kind("prediction"),
        Kind("problem", text=("name", "description"), nameFilter=True, patchable=True),
    )
}

#: The kinds' names (public: C{morpheo.KINDS}).
KINDS: tuple[str, ...] = tuple(TABLE)

#: Every text column any kind has (the metadata stores hold them all).
TEXT_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(f for k in TABLE.values() for f in k.text))

#: Every kind some kind has as its parent (its column holds the parent's uuid).
PARENTS: tuple[str, ...] = tuple(dict.fromkeys(k.parent for k in TABLE.values() if k.parent))


#: The keys the service writes blobs under: C{"{kind}/{uuid}-{12 hex digits}"}
#: (L{morpheo.objects.blobKey}).  What a store holds under any other name
#: is not the service's, and the sweep never touches it.
BLOB_KEY = re.compile(
    rf"(?:{'|'.join(map(re.escape, TABLE))})"
    r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-[0-9a-f]{12}"
)


def isBlobKey(key: str) -> bool:
    """Whether C{key} is of the shape of the service's own blob keys."""
    return BLOB_KEY.fullmatch(key) is not None


def plural(kinds: Iterable[str]) -> str:
    """C{"models"}, C{"algos and problems"}: kinds named in a sentence."""
    return " and ".join(f"{k}s" for k in kinds)


def childrenOf(kind: str) -> tuple[str, ...]:
    """The kinds whose objects name an object of C{kind} as their parent."""
    return tuple(k.name for k in TABLE.values() if k.parent == kind)
