# -*- test-case-name: tests.unit.test_client,tests.integration.test_client -*-
"""
C{morpheo-storage-client}: the service from a shell.  Each command prints
what a script needs (a uuid, a path, a line per object) or, with
C{--json}, the service's JSON; progress bars only on a terminal; an error
as one line on stderr and an exit code of its kind (L{ExitCode}).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

from .. import __version__
from .._kinds import KINDS
from ._client import DEFAULT_CHUNK_SIZE, JSON, StorageClient
from ._credentials import DEFAULT_URL, findCredentials
from ._errors import ClientError, ExitCode, UsageError
from ._progress import IProgress, NoProgress, TerminalProgress

PROGRAM = "morpheo-storage-client"

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


class _Parser(argparse.ArgumentParser):
    """A wrong command line is a L{UsageError} (exit 1), not argparse's exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def parseSize(text: str) -> int:
    """C{"8M"}, C{"65536"}: a positive number of bytes, with an optional K, M or G."""
    match = re.fullmatch(r"([0-9]+)([KMG]?)i?B?", text.strip(), re.I)
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (e.g. 8M)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(text)


def _globalOptions(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """
    The options every command takes, before or after its name (after it,
    they override only when given).
    """

    def default(value: object) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--url",
        default=default(None),
        help=f"the service (MORPHEO_STORAGE_URL; default {DEFAULT_URL})",
    )
    parser.add_argument("--user", default=default(None), help="user (MORPHEO_STORAGE_USER)")
    parser.add_argument(
        "--password",
        default=default(None),
        help="password (MORPHEO_STORAGE_PASSWORD, or ~/.netrc: better than this flag, "
        "which process listings show)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the service's JSON (lists: one object a line)",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", default=default(False), help="no progress bars"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=default(60.0),
        help="seconds a connection, a read or a write may wait (default 60)",
    )
    parser.add_argument(
        "--retries",
        type=_count,
        default=default(3),
        help="tries again after a network failure or a 502, 503, 504 (default 3)",
    )


def makeParser() -> argparse.ArgumentParser:
    """The command line's grammar."""
    parser = _Parser(
        prog=PROGRAM,
        description="Upload, download, list, show, change and delete the objects of a "
        "Morpheo Storage service.",
        epilog="Exit codes: 0 done, 1 wrong usage or request refused, 2 not found, "
        "3 conflict (uuid taken, algo in use), 4 credentials refused, "
        "5 service or network failure, 6 sha256 mismatch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _globalOptions(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _globalOptions(sub, defaults=False)
        sub.add_argument("kind", metavar="KIND", choices=KINDS, help=" | ".join(KINDS))
        return sub

    upload = command("upload", "upload a file as a new object; prints its uuid")
    upload.add_argument("file", metavar="FILE")
    upload.add_argument("--uuid", help="the new object's uuid (else the service makes one)")
    upload.add_argument("--name", help="its name (algo, problem)")
    upload.add_argument("--description", help="its description (problem)")
    upload.add_argument("--algo", help="the algo's uuid (model)")
    upload.add_argument("--sha256", help="the file's sha256 (hex): the service checks it")
    upload.add_argument(
        "--resumable",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send through the service's resumable /uploads (tus), in chunks retried "
        "where they stopped, if it has them (default: for files of 64 MiB or more)",
    )
    upload.add_argument(
        "--chunk-size",
        type=parseSize,
        default=DEFAULT_CHUNK_SIZE,
        help="bytes per request of a resumable upload (default 8M)",
    )

    download = command("download", "save an object's blob, resuming a partial one; prints the path")
    download.add_argument("uuid", metavar="UUID")
    download.add_argument("-o", "--output", help="the file to write (default: UUID, here)")

    listing = command("list", "the objects of a kind, newest first: uuid, time, size, name")
    listing.add_argument("--name", help="names starting with this (algo, problem)")
    listing.add_argument("--algo", help="models of this algo")
    listing.add_argument("--limit", type=_count, help="this many at most (default: all)")
    listing.add_argument(
        "--page-size", type=_count, default=100, help="objects asked for per request (default 100)"
    )

    show = command("show", "an object's metadata")
    show.add_argument("uuid", metavar="UUID")

    delete = command("delete", "delete an object and its blob; prints its uuid")
    delete.add_argument("uuid", metavar="UUID")

    patch = command("patch", "change a problem: its uuid, fields, blob; prints its uuid")
    patch.add_argument("uuid", metavar="UUID")
    patch.add_argument("--uuid", dest="newUuid", metavar="NEW", help="rename it")
    patch.add_argument("--name")
    patch.add_argument("--description")
    patch.add_argument("--file", help="replace its blob with this file")
    patch.add_argument("--sha256", help="the new file's sha256 (hex): the service checks it")
    return parser


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, checked (L{UsageError} if wrong)."""
    args = makeParser().parse_args(list(argv))
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if args.command == "list" and args.page_size == 0:
        raise UsageError("--page-size must be positive")
    return args


def run(
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The command C{argv} (without the program's name); its exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        args = parseArguments(argv)
        credentials = findCredentials(args.url, args.user, args.password, environ)
        showBars = not args.quiet and stderr.isatty()
        progress: IProgress = TerminalProgress(stderr) if showBars else NoProgress()
        with StorageClient(
            credentials.url,
            credentials.auth,
            timeout=args.timeout,
            retries=args.retries,
            chunkSize=getattr(args, "chunk_size", DEFAULT_CHUNK_SIZE),
        ) as client:
            _COMMANDS[args.command](client, args, progress, stdout)
    except ClientError as e:
        print(f"{PROGRAM}: {' '.join(str(e).split())}", file=stderr)
        return int(e.exitCode)
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (| head): what it wanted it has.
        return int(ExitCode.OK)
    return int(ExitCode.OK)


def main() -> int:
    """The console script."""
    return run(sys.argv[1:])


def _print(stdout: TextIO, args: argparse.Namespace, answer: JSON, text: str) -> None:
    print(json.dumps(answer) if args.json else text, file=stdout, flush=True)


def _upload(
    client: StorageClient, args: argparse.Namespace, progress: IProgress, stdout: TextIO
) -> None:
    answer = client.upload(
        args.kind,
        args.file,
        uuid=args.uuid,
        name=args.name,
        description=args.description,
        algo=args.algo,
        sha256=args.sha256,
        resumable=args.resumable,
        progress=progress,
    )
    _print(stdout, args, answer, str(answer["uuid"]))


def _download(
    client: StorageClient, args: argparse.Namespace, progress: IProgress, stdout: TextIO
) -> None:
    path = args.output or args.uuid
    if os.path.isdir(path):
        path = os.path.join(path, args.uuid)
    answer = client.download(args.kind, args.uuid, path, progress=progress)
    _print(stdout, args, answer, path)


def _list(
    client: StorageClient, args: argparse.Namespace, progress: IProgress, stdout: TextIO
) -> None:
    for item in client.list(
        args.kind, name=args.name, algo=args.algo, limit=args.limit, pageSize=args.page_size
    ):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(item["timestamp_upload"])))
        label = item.get("name", item.get("algo", ""))
        _print(stdout, args, item, f"{item['uuid']}\t{when}\t{item['size']}\t{label}".rstrip())


def _show(
    client: StorageClient, args: argparse.Namespace, progress: IProgress, stdout: TextIO
) -> None:
    answer = client.show(args.kind, args.uuid)
    _print(stdout, args, answer, "\n".join(f"{key}: {value}" for key, value in answer.items()))


def _delete(
    client: StorageClient, args: argparse.Namespace, progress: IProgress, stdout: TextIO
) -> None:
    answer = client.delete(args.kind, args.uuid)
    _print(stdout, args, answer, str(answer["uuid"]))


def _patch(
    client: StorageClient, args: argparse.Namespace, progress: IProgress, stdout: TextIO
) -> None:
    answer = client.patch(
        args.kind,
        args.uuid,
        newUuid=args.newUuid,
        name=args.name,
        description=args.description,
        path=args.file,
        sha256=args.sha256,
        progress=progress,
    )
    _print(stdout, args, answer, str(answer["uuid"]))


_COMMANDS = {
    "upload": _upload,
    "download": _download,
    "list": _list,
    "show": _show,
    "delete": _delete,
    "patch": _patch,
}
