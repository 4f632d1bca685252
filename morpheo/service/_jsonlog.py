# -*- test-case-name: tests.integration.test_accesslog -*-
"""
C{--log-format json}: the whole twistd log as one JSON object per line,
for log shippers.

twistd chooses its log observer before the service exists; its documented
hook is C{--logger}: the dotted name of a factory of observers, which twistd
imports (C{namedAny}, in its own C{postOptions}, after the plugin's) and
calls without arguments.  L{morpheo.tap.Options} sets that option of the
twistd command line to what L{jsonObserverFactory} returns, the name of
L{twistdObserver}, which writes where twistd would have written text
(stdout with C{-n}, else C{--logfile}, default C{twistd.log}).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent
from twisted.python.logfile import LogFile

#: Event keys copied into every line (besides the message).
_FIELDS = (
    "method", "path", "status", "bytesIn", "bytesOut", "duration", "client", "user", "aborted",
)  # fmt: skip


def eventAsLine(event: dict[str, Any]) -> str:
    """
    One JSON object: C{time} (ISO 8601, UTC), C{level}, C{namespace},
    C{message} (the formatted text), the access fields for access events
    (and C{worker}, the index of the worker of C{--workers} that served it),
    and C{failure} with its traceback for failures.
    """
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
        if when is not None
        else None,
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    if event.get("access"):
        record["type"] = "access"
        for key in _FIELDS:
            record[key] = event.get(key)
        if "worker" in event:
            record["worker"] = event["worker"]
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    return json.dumps(record, default=str, ensure_ascii=False) + "\n"


def jsonFileObserver(out: IO[str]) -> ILogObserver:
    """An observer writing L{eventAsLine} lines to C{out}."""
    return FileLogObserver(out, eventAsLine)


#: The twistd options L{twistdObserver} writes by (its C{--logfile}, C{-n}):
#: twistd calls it without arguments.
_serverOptions: Any = None


def jsonObserverFactory(serverOptions: Any) -> str:
    """
    The value of twistd's C{--logger} for JSON lines written where twistd
    would have written text given C{serverOptions}: the dotted name of
    L{twistdObserver} (twistd resolves C{--logger} by name; an object there
    fails with "could not be imported").
    """
    global _serverOptions
    _serverOptions = serverOptions
    return f"{__name__}.{twistdObserver.__name__}"


def twistdObserver() -> ILogObserver:
    """
    The observer of C{--log-format json}, called by twistd before it starts
    logging (so C{sys.stdout} is still the real one).
    """
    options = _serverOptions or {}
    path = options.get("logfile") or ""
    out: IO[str]
    if path == "-" or (not path and options.get("nodaemon")):
        out = sys.stdout
    else:
        out = LogFile.fromFullPath(path or "twistd.log")
    return jsonFileObserver(out)


__all__ = ["eventAsLine", "jsonFileObserver", "jsonObserverFactory", "twistdObserver"]
