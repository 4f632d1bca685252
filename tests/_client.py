"""
Client-side helpers: multipart bodies built byte for byte (so the tests can
also build wrong ones), and JSON responses read with treq.
"""

from __future__ import annotations

import json
import uuid as _uuid
from typing import Any

import treq

BOUNDARY = "morpheo-test-boundary-7f3a"


def newUUID() -> str:
    return str(_uuid.uuid4())


def form(*parts: tuple[str, str | bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """
    A multipart/form-data body with C{parts} in the order given; a part whose
    value is bytes is sent as a file.
    """
    out = b""
    for name, value in parts:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, bytes):
            out += (
                f'Content-Disposition: form-data; name="{name}"; filename="{name}.bin"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode() + value
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        out += b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


FORM_HEADERS = {b"Content-Type": [f"multipart/form-data; boundary={BOUNDARY}".encode()]}


def uploadFields(
    kind: str, data: bytes, uuid: str | None = None, **extra: str
) -> list[tuple[str, str | bytes]]:
    """The fields of a valid upload of C{kind}, blob last."""
    fields: list[tuple[str, str | bytes]] = []
    if uuid:
        fields.append(("uuid", uuid))
    if kind in ("algo", "problem"):
        fields.append(("name", extra.pop("name", f"a {kind}")))
    if kind == "problem":
        fields.append(("description", extra.pop("description", "great")))
    fields.extend(extra.items())
    fields.append(("size", str(len(data))))
    fields.append(("blob", data))
    return fields


async def jsonOf(response: Any) -> Any:
    return json.loads(await treq.content(response))
