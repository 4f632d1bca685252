"""
Lists in memory: newest first, pages and limits, cursors that lose and
repeat nothing while uploads arrive, filters by algo and by name prefix.
"""

from __future__ import annotations

from typing import Any

import pytest

from morpheo._types import Claim

from .harness import Service, newUUID


def listed(service: Service, path: str) -> dict[str, Any]:
    reply = service.request("GET", path)
    assert reply.code == 200, reply.body
    document: dict[str, Any] = reply.json()
    return document


def test_listsAreNewestFirst(service: Service) -> None:
    uuids = [service.stored("data", b"x")["uuid"] for _ in range(3)]
    page = listed(service, "/data")
    assert [item["uuid"] for item in page["items"]] == uuids[::-1]
    assert (page["page"], page["length"], page["next"]) == (0, 3, None)
    assert set(page["items"][0]) == {"uuid", "timestamp_upload", "size", "sha256"}


def test_pagesCountThemselves(service: Service) -> None:
    uuids = [service.stored("data", b"x")["uuid"] for _ in range(5)][::-1]
    second = listed(service, "/data?limit=2&page=1")
    assert (second["page"], second["length"]) == (1, 2)
    assert [item["uuid"] for item in second["items"]] == uuids[2:4]
    assert listed(service, "/data?limit=2&page=9")["items"] == []


def test_followingNextLosesAndRepeatsNothingWhileUploadsArrive(service: Service) -> None:
    before = [service.stored("data", b"x")["uuid"] for _ in range(7)][::-1]
    seen: list[str] = []
    path: str | None = "/data?limit=3"
    pages = 0
    while path is not None:
        page = listed(service, path)
        assert page["page"] == pages
        seen += [item["uuid"] for item in page["items"]]
        service.stored("data", b"arrived meanwhile")
        path = page["next"]
        pages += 1
    assert seen == before
    assert pages == 3


def test_theLastPageHasNoNext(service: Service) -> None:
    for _ in range(2):
        service.stored("data", b"x")
    assert listed(service, "/data?limit=2")["next"] is None


def test_nextKeepsTheFilters(service: Service) -> None:
    algo = service.algo()
    for _ in range(3):
        service.request("POST", f"/model?algo={algo}", b"m")
    page = listed(service, f"/model?algo={algo}&limit=2")
    assert page["next"].startswith(f"/model?limit=2&algo={algo}&cursor=1.")
    assert listed(service, page["next"])["length"] == 1


@pytest.mark.parametrize("limit", ["0", "1001"])
def test_aLimitOutOfBoundsIs400(service: Service, limit: str) -> None:
    reply = service.request("GET", f"/data?limit={limit}")
    assert (reply.code, reply.error) == (400, "limit must be between 1 and 1000")


@pytest.mark.parametrize("name", ["limit", "page"])
@pytest.mark.parametrize("value", ["-1", "x", "1.5"])
def test_aPageOrLimitThatIsNotAnIntegerIs400(service: Service, name: str, value: str) -> None:
    reply = service.request("GET", f"/data?{name}={value}")
    assert (reply.code, reply.error) == (
        400,
        f"{name} must be a non-negative integer, not {value!r}",
    )


@pytest.mark.parametrize("cursor", ["x", "1", "1.x", "-1.5"])
def test_aCursorThisServiceDidNotGiveIs400(service: Service, cursor: str) -> None:
    reply = service.request("GET", f"/data?cursor={cursor}")
    assert (reply.code, reply.error) == (
        400,
        "cursor is not one this service gave; follow the list's next",
    )


def test_anUnknownParameterIs400(service: Service) -> None:
    reply = service.request("GET", "/data?colour=blue")
    assert (reply.code, reply.error) == (
        400,
        "unknown parameter 'colour': lists take algo, cursor, limit, name, page",
    )


def test_modelsFilterByAlgo(service: Service) -> None:
    mine, other = service.algo(), service.algo()
    model = service.request("POST", f"/model?algo={mine}", b"m").json()
    service.request("POST", f"/model?algo={other}", b"m")
    assert listed(service, f"/model?algo={mine}")["items"] == [model]


def test_onlyModelsFilterByAlgo(service: Service) -> None:
    reply = service.request("GET", f"/data?algo={newUUID()}")
    assert (reply.code, reply.error) == (400, "only models can be listed by algo")


def test_aMalformedAlgoFilterIs400(service: Service) -> None:
    assert service.request("GET", "/model?algo=nope").code == 400


@pytest.mark.parametrize("kind", ["algo", "problem"])
def test_algosAndProblemsFilterByNamePrefix(service: Service, kind: str) -> None:
    funky = service.stored(kind, b"x", name="funky_1")
    service.stored(kind, b"x", name="plain")
    assert listed(service, f"/{kind}?name=funky")["items"] == [funky]


def test_aNamePrefixIsLiteral(service: Service) -> None:
    service.stored("algo", b"x", name="abc")
    percent = service.stored("algo", b"x", name="a%c")
    assert listed(service, "/algo?name=a%25")["items"] == [percent]
    assert listed(service, "/algo?name=a_")["items"] == []


def test_onlyAlgosAndProblemsHaveNames(service: Service) -> None:
    reply = service.request("GET", "/data?name=x")
    assert (reply.code, reply.error) == (400, "only algos and problems have a name to filter on")


def test_uploadsInProgressAreNotListed(service: Service) -> None:
    service.stored("data", b"x")
    # A claim that never completes, as a stalled upload leaves it.
    service.run(service.metadata.claim(Claim("data", newUUID(), "data/key", token="t")))
    assert listed(service, "/data")["length"] == 1
