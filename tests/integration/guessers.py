"""
Clients guessing passwords, for the tests of a server under attack:
C{python -m tests.integration.guessers URL COUNT SECONDS} starts COUNT
clients, each from its own address of 127.0.0.0/8 (127.0.0.10 and on), that
send wrong passwords for known and unknown names as fast as they are
answered, for SECONDS.  It prints C{guessing} once they have started, then
one JSON line: for each client the count of each status it was answered,
and what was wrong with an answer (an error without its JSON body or
C{Retry-After}).  A process of its own, so that a test timing the other
users' requests is not slowed down by the guessers' own work.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react
from twisted.web.client import Agent, HTTPConnectionPool

NAMES = ("alice", "bob", "mallory")


async def guess(
    reactor: Any, url: str, number: int, until: float, seen: Counter[int], problems: list[str]
) -> None:
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool, bindAddress=(f"127.0.0.{10 + number}", 0)))
    attempt = 0
    while time.monotonic() < until:
        attempt += 1
        auth = (NAMES[attempt % len(NAMES)], f"guess {number}.{attempt}")
        r = await client.get(url, auth=auth)
        body = await treq.content(r)
        seen[r.code] += 1
        try:
            document = json.loads(body)
            assert set(document) == {"error"}, document
            if r.code in (429, 503):
                assert int(r.headers.getRawHeaders(b"retry-after")[0]) >= 1
            if r.code == 401:
                assert r.headers.getRawHeaders(b"www-authenticate")
        except (AssertionError, ValueError, TypeError) as e:
            problems.append(f"{r.code}: {e!r} {body[:100]!r}")


async def main(reactor: Any, url: str, count: str, seconds: str) -> None:
    until = time.monotonic() + float(seconds)
    seen = [Counter[int]() for _ in range(int(count))]
    problems: list[str] = []
    guessing = gatherResults(
        [
            Deferred.fromCoroutine(guess(reactor, url, i, until, seen[i], problems))
            for i in range(int(count))
        ]
    )
    print("guessing", flush=True)
    await guessing
    print(json.dumps({"answers": seen, "problems": problems[:20]}), flush=True)


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
