"""Adopting an existing copy: the one run that lists the remote.

Most people who switch already have an offsite copy (made with rsync, rclone, or
a disk carried over). Sending it again is weeks behind a home uplink. So
`backup --adopt` walks the remote once (descriptor-relative, no link followed,
names decoded as the remote's profile says), pairs what it finds with the scan,
and writes the view of the remote the run then plans against, as any run plans
against the last snapshot:

- a remote file whose source file has the same path and size, and the same
  mtime as far as the remote keeps time, is trusted to hold the source's
  content: it gets the source's digest, and nothing is sent for it;
  `--adopt=checksum` reads every remote file instead and records its real
  digest (and chunk digests: a large file that differs is then patched);
- a remote file at a path the source does not have, whose size and mtime
  match source files at other paths that all have one digest, gets that
  digest: the plan moves it there (a folder renamed since the copy was made
  costs one rename, as in any run) instead of sending it again;
- everything else is what it is: a file of unknown content (replaced by the
  source's), a folder or link, or an extra the plan removes. Extras count
  against the deletion guard like any deletion; with keep_extras they stay out
  of the view, and no run touches them. What an adoption replaces or removes
  was in no snapshot, so it does not go through the attic (retention would let
  it go at the run's end anyway): the guard and keep_extras protect a remote
  that holds more than the source.

The plan, the journal, the guards and the commit are those of any run: a killed
adoption resumes from its journal like any killed run.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import FatalIOError
from .paths import is_under, merge, parent
from .reading import Found, walk_decoded, walk_found
from .remote import META
from .remotefs import Remote
from .scanner import CHUNK_THRESHOLD
from .snapshot import DIR, FILE, SYMLINK, Entry, SnapshotReader, sort_key


@dataclass(slots=True)
class Adoption:
    """How to adopt (mode, keep_extras), and what was found."""

    mode: str = "times"
    keep_extras: bool = False
    found: int = 0  # entries on the remote (outside .btsoot)
    files: int = 0  # remote files taken as holding their source file's content
    bytes: int = 0
    matched_elsewhere: int = 0  # ... of those, found at another path (moved by the plan)
    unsure: int = 0  # same path and size as the source's, another mtime: sent again
    extras: int = 0  # remote files the source does not have (and nothing moves)
    extra_bytes: int = 0
    hashed_files: int = 0  # read on the remote (checksum)
    hashed_bytes: int = 0

    def summary(self) -> dict[str, object]:
        return {"mode": self.mode, "keep_extras": self.keep_extras, "found": self.found,
                "files": self.files, "bytes": self.bytes,
                "matched_elsewhere": self.matched_elsewhere, "unsure": self.unsure,
                "extras": self.extras,
                "extra_bytes": self.extra_bytes, "hashed_files": self.hashed_files,
                "hashed_bytes": self.hashed_bytes}


def walk_remote(remote: Remote, decoded: bool) -> list[Found]:
    """Everything on the remote outside .btsoot/, in snapshot order. A folder that
    cannot be listed stops the adoption: what it holds would be unknown, and the
    plan would write into it blind."""
    errors: list[tuple[bytes, str]] = []
    unlistable: set[bytes] = set()
    walk = walk_decoded if decoded else walk_found
    meta = META.encode()
    found = [f for f in walk(remote.root, b"", errors, unlistable) if not is_under(f.path, meta)]
    if errors:
        path, why = errors[0]
        raise FatalIOError(f"remote {remote.show(path)}: {why}; nothing was adopted")
    found.sort(key=lambda f: sort_key(f.path))
    return found


def _timekey(size: int, mtime_ns: int, step: int) -> tuple[int, int]:
    return size, mtime_ns // step


def view(remote: Remote, found: list[Found], scan: str, how: Adoption,
         jobs: int | None) -> Iterator[Entry]:
    """The remote as found, in snapshot order, as entries the plan can compare with
    the scan (see the module's docstring)."""
    step = max(1, remote.mtime_step)
    hashed: dict[bytes, tuple] = {}
    if how.mode == "checksum":
        from .verify import hash_on_remote

        files = [Entry(f.path, FILE, f.size) for f in found if f.kind == FILE]
        for fe, res in hash_on_remote(remote, files, jobs, chunk_threshold=CHUNK_THRESHOLD):
            digest, chunks, _size, _mtime, _ino, err = res
            if err:
                raise FatalIOError(f"remote {remote.show(fe.path)}: cannot be read "
                                   f"({os.strerror(err) if err > 0 else 'changed while read'}); "
                                   "nothing was adopted")
            hashed[fe.path] = (digest, tuple(chunks) if chunks else None)
            how.hashed_files += 1
            how.hashed_bytes += fe.size

    # One pass over the scan pairs what was found with the source by path. A file
    # the source does not have at its path waits for a second pass (only then):
    # the digests of the source files with its (size, time) key, elsewhere.
    out: list[tuple[Entry | None, bool]] = []  # (entry, an extra folder?)
    loose: list[tuple[int, Found]] = []
    with SnapshotReader(scan) as r:
        for f, s in merge(found, r):
            if f is None:
                continue
            how.found += 1
            if s is None and f.kind == FILE and f.path not in hashed and how.mode == "times":
                loose.append((len(out), f))
                out.append((None, False))
                continue
            got = _entry(remote, f, s, how, hashed.get(f.path), None)
            out.append((got, s is None and got is not None and got.kind == DIR))
    if loose:
        keys = {_timekey(f.size, f.mtime_ns, step) for _, f in loose}
        elsewhere: dict[tuple[int, int], set[str | None]] = defaultdict(set)
        with SnapshotReader(scan) as r:
            for e in r:
                k = _timekey(e.size, e.mtime_ns, step)
                if e.kind == FILE and k in keys:
                    elsewhere[k].add(e.digest)
        for i, f in loose:
            digests = elsewhere.get(_timekey(f.size, f.mtime_ns, step), set())
            one = next(iter(digests)) if len(digests) == 1 else None
            out[i] = (_entry(remote, f, None, how, None, one), False)
    # Extras kept: a folder the source does not have stays out of the view too,
    # unless something in the view is below it (a file the plan moves elsewhere).
    below = ({parent(v.path) for v, extra_dir in out if v is not None and not extra_dir}
             if how.keep_extras else set())
    for v, extra_dir in reversed(out):  # the deepest first
        if v is not None and extra_dir and v.path in below:
            below.add(parent(v.path))
    for v, extra_dir in out:
        if v is not None and (not (extra_dir and how.keep_extras) or v.path in below):
            yield v


def _entry(remote: Remote, f: Found, s: Entry | None, how: Adoption,
           hashed: tuple[str | None, tuple[str, ...] | None] | None,
           elsewhere: str | None) -> Entry | None:
    """The view's entry for what was found at f.path. s: the source's entry there;
    hashed: (digest, chunks) read on the remote (checksum); elsewhere: the one
    digest of the source files elsewhere with f's size and time."""
    kind = f.kind if f.kind in (FILE, DIR, SYMLINK) else FILE  # a fifo or device: removed
    same_time = s is not None and remote.same_mtime(f.mtime_ns, s.mtime_ns)
    mtime = s.mtime_ns if same_time and s is not None else f.mtime_ns
    uid, gid = (f.uid if f.uid >= 0 else None), (f.gid if f.gid >= 0 else None)
    if kind != FILE or f.kind != FILE:
        return _extra(Entry(f.path, kind, 0, mtime, f.mode, target=f.target, uid=uid, gid=gid),
                      s, how)
    digest, chunks = hashed if hashed is not None else (elsewhere, None)
    if s is not None and s.kind == FILE and s.size == f.size and (
            digest == s.digest if how.mode == "checksum" else same_time):
        # The source's content: its digests, and its link group (the remote may
        # hold the group as copies; the content is the same).
        how.files += 1
        how.bytes += f.size
        return Entry(f.path, FILE, f.size, mtime, f.mode, s.ino, s.dev, s.digest, s.chunks,
                     uid=uid, gid=gid, nlink=s.nlink)
    e = Entry(f.path, FILE, f.size, mtime, f.mode, digest=digest, chunks=chunks, uid=uid, gid=gid)
    if s is None:
        if elsewhere is not None:
            how.files += 1
            how.bytes += f.size
            how.matched_elsewhere += 1
            return e
        return _extra(e, s, how)
    if s.kind == FILE and s.size == f.size and how.mode == "times":
        how.unsure += 1
    return e  # unknown or other content: replaced


def _extra(e: Entry, s: Entry | None, how: Adoption) -> Entry | None:
    """A found entry, or None for an extra file or link left out of the view
    (keep_extras; folders are decided in view())."""
    if s is None and e.kind != DIR:
        if e.kind == FILE:
            how.extras += 1
            how.extra_bytes += e.size
        if how.keep_extras:
            return None
    return e
