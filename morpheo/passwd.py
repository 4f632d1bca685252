# -*- test-case-name: tests.integration.test_auth -*-
"""
C{python -m morpheo.passwd USER [--pbkdf2]}: a line for a password file
(C{--auth file:PATH}), the password read without echo (or from stdin when
it is not a terminal), hashed with scrypt (or PBKDF2-SHA256).
"""

from __future__ import annotations

import getpass
import sys

from .web._passwords import hashPassword


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    method = "pbkdf2_sha256" if "--pbkdf2" in args else "scrypt"
    names = [a for a in args if not a.startswith("--")]
    if len(names) != 1 or ":" in names[0]:
        print("usage: python -m morpheo.passwd USER [--pbkdf2]", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {names[0]}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("morpheo.passwd: empty password", file=sys.stderr)
        return 1
    print(f"{names[0]}:{hashPassword(password, method)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
