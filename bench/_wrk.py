# -*- test-case-name: tests.unit.test_bench -*-
"""
Small requests, many at once, through wrk: a Lua script sets the method,
the headers and the body (read from a file) and, when wrk is done, writes
one JSON line of what it counted, which is all that is read of its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

from attrs import frozen

from bench._common import childrenCPU

#: The last line wrk's script writes: requests, microseconds, errors by kind.
DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d,'
    .. ' "status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def luaString(text: str) -> str:
    """C{text} as a Lua string literal (JSON's escapes of ASCII are Lua's too)."""
    if not text.isascii():
        raise ValueError("wrk's script takes ASCII only")
    return json.dumps(text)


def script(method: str, headers: dict[str, str], bodyPath: str | None) -> str:
    """The Lua script of one kind of request."""
    lines = [f"wrk.method = {luaString(method)}"]
    for name, value in headers.items():
        lines.append(f"wrk.headers[{luaString(name)}] = {luaString(value)}")
    if bodyPath is not None:
        lines += [
            f'local f = assert(io.open({luaString(bodyPath)}, "rb"))',
            'wrk.body = f:read("*a")',
            "f:close()",
        ]
    return "\n".join(lines) + "\n" + DONE


@frozen
class Counted:
    """What wrk counted over one run."""

    requests: int
    seconds: float
    #: Non-2xx/3xx answers, and connections that failed or timed out.
    errors: int
    #: The CPU time wrk itself used.
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        """Good answers a second."""
        return (self.requests - self.errors) / self.seconds


def parse(output: str) -> Counted:
    """The last JSON line of wrk's output, as written by L{DONE}."""
    for line in reversed(output.splitlines()):
        if line.startswith('{"requests"'):
            done = json.loads(line)
            errors = sum(done[k] for k in ("connect", "read", "write", "status", "timeout"))
            return Counted(done["requests"], done["duration_us"] / 1e6, errors)
    raise ValueError(f"no summary in wrk's output: {output[-500:]!r}")


def wrk(
    url: str,
    duration: float,
    connections: int,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    bodyPath: str | None = None,
    threads: int = 2,
) -> Counted:
    """C{connections} connections sending C{method} to C{url} for C{duration} seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script(method, headers or {}, bodyPath))
    try:
        before = childrenCPU()
        done = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{duration:g}s",
                "--timeout",
                "10s",
                "-s",
                f.name,
                url,
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=duration + 60,
        )
        cpu = childrenCPU() - before
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"wrk {url}: {done.stderr.strip() or done.stdout[-500:]}")
    counted = parse(done.stdout)
    return Counted(counted.requests, counted.seconds, counted.errors, cpu)
