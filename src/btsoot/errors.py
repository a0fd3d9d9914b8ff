"""Exceptions, each carrying the process exit code the CLI turns it into.

Every error a user can cause or meet has a class here; the CLI catches
`BtsootError` once, prints its message on one line and exits with its code.
Classes that describe an OS-level failure also subclass `OSError`, so library
callers can catch either.
"""

from __future__ import annotations

import os

# Exit codes: documented in README.md ("Exit codes"). Keep the two in step.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: unexpected exception (message + log, no traceback)
EXIT_USAGE = 2  # bad command line or config (click also uses 2)
EXIT_PARTIAL = 3  # finished, but some files could not be read, or the remote cannot hold them
EXIT_GUARD = 4  # stopped by a safety guard before touching the remote
EXIT_LOCKED = 5  # another run holds the block's lock
EXIT_FATAL = 6  # fatal I/O error (remote unreachable, disk full, ...)
EXIT_DAMAGE = 7  # verify found damage, or a restored file did not match its digest
EXIT_STATE = 8  # local or remote state (snapshot, journal) is corrupt or too new
EXIT_LOCAL = 9  # the local state folder cannot be used (not a folder, read-only, full)


def show_path(p: bytes) -> str:
    """A path for people (messages, logs, listings): valid UTF-8 as is, any other
    byte as \\xNN. The one spelling of a non-UTF-8 name everywhere."""
    return p.decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """text with os.fsdecode's stand-ins for non-UTF-8 bytes (lone surrogates, which
    neither a terminal nor JSON can hold) spelled as show_path spells them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class BtsootError(Exception):
    exit_code = EXIT_INTERNAL

    def __init__(self, message: str) -> None:
        message = printable(message)
        super().__init__(message)
        self.message = message


class UsageError(BtsootError, ValueError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    pass


class GuardError(BtsootError):
    exit_code = EXIT_GUARD


class LockedError(BtsootError):
    exit_code = EXIT_LOCKED


class FatalIOError(BtsootError, OSError):
    exit_code = EXIT_FATAL


class DamageError(BtsootError):
    exit_code = EXIT_DAMAGE


class StateError(BtsootError):
    exit_code = EXIT_STATE


class SourceError(OSError):
    """An OSError from reading the source, marked so where the read was made (the
    copy, the patch): the executor never has to guess a failure's side from its
    file name (a long path is read through /proc/self/fd, which names nothing)."""

    @classmethod
    def of(cls, e: OSError, path: str | bytes | None = None) -> SourceError:
        return cls(e.errno, e.strerror, path if path is not None else e.filename)


class LocalStateError(BtsootError):
    """Writing or reading btsoot's own state folder (BTSOOT_STATE) failed: it is
    below a file, read-only, full. Raised where that I/O is done, so it is never
    taken for an error of the source or the remote."""

    exit_code = EXIT_LOCAL

    @classmethod
    def of(cls, e: OSError, path: str | bytes | None = None) -> LocalStateError:
        where = path if path is not None else e.filename
        shown = os.fsdecode(where) if where is not None else "folder"
        why = e.strerror or str(e)
        return cls(f"local state {shown}: {why} (BTSOOT_STATE must be a writable folder "
                   "with free space)")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (systemd, a timeout, a shutdown) arrived: the run ends
    the way an interrupt ends it (temp files removed, the journal kept for the
    next run), with exit code 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
