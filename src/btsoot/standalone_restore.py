#!/usr/bin/env python3
"""Restore a btsoot remote with nothing but Python 3 (standard library only).

btsoot copies this file into every remote it writes, as REMOTE/.btsoot/restore.py,
beside FORMAT.txt (the snapshot format). Run it with the remote mounted:

    python3 /mnt/offsite/.btsoot/restore.py DEST            # the newest backup
    python3 /mnt/offsite/.btsoot/restore.py --list          # the snapshots kept
    python3 /mnt/offsite/.btsoot/restore.py --snapshot ID DEST

DEST must be missing or an empty folder. Files, folders and symbolic links come
back with their names (byte for byte, also where the remote had to store them
under an encoded name), modes and modification times, extended attributes and
ACLs, hard links as links, and (run as root) their numeric owners and groups. An older snapshot's files
are found by their digests: in the copy, or in the attic (REMOTE/.btsoot/attic,
where a backup moves what it replaces or deletes; a large file updated in place
is rebuilt from its newer content and the undo records kept there). Sizes are
checked; the content digests too where the `xxhash` package is installed.
Nothing on the remote is changed, and no link on it is followed.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import sys
import zlib
from base64 import b64decode
from typing import Any, NoReturn

META = os.path.dirname(os.path.abspath(__file__))
REMOTE = os.path.dirname(META)
SNAPS = os.path.join(META, "snapshots")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def fail(msg: str) -> NoReturn:
    sys.stderr.write("restore.py: " + msg + "\n")
    sys.exit(1)


def field(d: dict[str, Any], key: str) -> bytes:
    """A path-like field: text, or base64 under KEY_b64 for names that are not UTF-8."""
    if key + "_b64" in d:
        return b64decode(d[key + "_b64"])
    v = d.get(key)
    return v.encode("utf-8") if isinstance(v, str) else b""


# What a damaged gzip file raises, depending on where the damage is.
DAMAGED = (OSError, ValueError, EOFError, zlib.error)


def read_lines(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with gzip.open(path, "rb") as f:
        lines = f.read().splitlines()
    if not lines:
        raise ValueError("empty")
    header = json.loads(lines[0])
    end = json.loads(lines[-1])
    if not (isinstance(end, dict) and end.get("end") is True
            and end.get("count") == len(lines) - 2):
        raise ValueError("truncated (no trailer)")
    return header, [json.loads(x) for x in lines[1:-1]]


def snapshots() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for n in os.listdir(SNAPS):
        for kind, suffix in (("full", ".full.jsonl.gz"), ("full", ".full-copy.jsonl.gz"),
                             ("delta", ".delta.jsonl.gz")):
            if n.endswith(suffix) and ".tmp." not in n:
                out.setdefault(n[: -len(suffix)], []).append((kind, os.path.join(SNAPS, n)))
    return out


def newest(snaps: dict[str, list[tuple[str, str]]]) -> str:
    try:
        with open(os.path.join(META, "block.json"), "rb") as f:
            named = json.loads(f.read()).get("snapshot")
    except (OSError, ValueError):
        named = None
    return named if named in snaps else max(snaps)


def resolve(snaps: dict[str, list[tuple[str, str]]], sid: str
            ) -> tuple[dict[bytes, dict[str, Any]], dict[str, Any]]:
    """The entries of snapshot sid (path -> entry dict), and its header."""
    chain: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    top: dict[str, Any] | None = None
    while True:
        if sid not in snaps or sid in seen:
            fail("snapshot chain broken at " + repr(sid))
        seen.add(sid)
        files = snaps[sid]
        if files[0][0] == "full":
            break
        try:
            header, recs = read_lines(files[0][1])
        except DAMAGED as err:
            fail("snapshot " + sid + " is damaged (" + str(err) + "); an older one may be"
                 " whole: restore.py --list, then restore.py --snapshot ID DEST")
        chain.append(recs)
        top = top or header
        sid = str(header.get("base"))
    table: dict[bytes, dict[str, Any]] | None = None
    errors: list[str] = []
    for _, path in sorted(files, key=lambda f: "copy" in f[1]):  # the first, then its copy
        try:
            header, recs = read_lines(path)
            table = {field(e, "path"): e for e in recs}
            top = top or header
            break
        except DAMAGED as err:
            errors.append(path + ": " + str(err))
    if table is None:
        fail("no readable full snapshot: " + "; ".join(errors))
    for recs in reversed(chain):
        for r in recs:
            if r.get("op") == "del":
                table.pop(field(r, "path"), None)
            elif r.get("op") == "put":
                e = r["entry"]
                table[field(e, "path")] = e
    return table, top or {}


def decode(stored: bytes) -> bytes:
    """The source's name for a stored name: U+F000 + b stands for byte b."""
    out, i = bytearray(), 0
    while i < len(stored):
        if stored[i] == 0xEF and i + 3 <= len(stored):
            try:
                c = ord(stored[i:i + 3].decode("utf-8"))
            except UnicodeDecodeError:
                c = 0
            if 0xF000 <= c <= 0xF0FF:
                out.append(c - 0xF000)
                i += 3
                continue
        out.append(stored[i])
        i += 1
    return bytes(out)


class Remote:
    """Folders of the remote opened name by name, never through a link."""

    def __init__(self, escaped: set[bytes]) -> None:
        self.fds: dict[bytes, int] = {b"": os.open(REMOTE, DIR_FLAGS)}
        self.names: dict[bytes, tuple[set[bytes], dict[bytes, bytes]]] = {}
        self.escaped = escaped  # paths stored under an escaped name (case twins)
        # Names are encoded only where profile.json says the file system refuses some.
        try:
            with open(os.path.join(META, "profile.json"), "rb") as f:
                p = json.loads(f.read())
            self.encoded = bool(p.get("forbidden") or p.get("utf8_only") or p.get("no_trailing"))
        except (OSError, ValueError, AttributeError):
            self.encoded = True  # unknown: decode, as the names cannot tell otherwise

    def stored(self, folder: bytes, name: bytes) -> bytes | None:
        if folder not in self.names:
            fd = self.dir(folder)
            names = [os.fsencode(n) for n in os.listdir(fd)]  # (a descriptor lists str)
            self.names[folder] = (set(names), {decode(n): n for n in names})
        plain, decoded = self.names[folder]
        path = folder + b"/" + name if folder else name
        if not self.encoded and path not in self.escaped:
            return name if name in plain else None
        return decoded.get(name)

    def dir(self, folder: bytes) -> int:
        if folder not in self.fds:
            parent, _, name = folder.rpartition(b"/")
            real = self.stored(parent, name)
            if real is None:
                raise FileNotFoundError(folder)
            self.fds[folder] = os.open(real, DIR_FLAGS, dir_fd=self.dir(parent))
        return self.fds[folder]

    def open(self, path: bytes) -> int:
        folder, _, name = path.rpartition(b"/")
        real = self.stored(folder, name)
        if real is None:
            raise FileNotFoundError(path)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir(folder))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError("not a file")
        return fd


ATTIC = b".btsoot/attic"


class Finder:
    """Where the content of an older snapshot's file is now: by digest, in the copy
    (as the newest snapshot records it) or in the attic (by its lists)."""

    def __init__(self, newest: dict[bytes, dict[str, Any]]) -> None:
        self.now: dict[bytes, str] = {}
        self.plain: dict[str, bytes] = {}
        self.undo: dict[str, tuple[bytes, str, int]] = {}
        for p, e in newest.items():
            if e.get("type") == "file" and e.get("digest"):
                self.now[p] = e["digest"]
                self.plain.setdefault(e["digest"], p)
        top = os.path.join(META, "attic")
        runs = sorted((n[:-6] for n in os.listdir(top) if n.endswith(".jsonl")),
                      reverse=True) if os.path.isdir(top) else []
        for run in runs:
            try:
                with open(os.path.join(top, run + ".jsonl"), "rb") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    e = json.loads(line)
                    d, where = e.get("digest"), ATTIC + b"/" + run.encode() + b"/" + field(e, "path")
                    if e.get("type") != "file" or not isinstance(d, str):
                        continue
                    u = e.get("undo")
                    if isinstance(u, dict):
                        self.undo.setdefault(d, (where, str(u["base"]), int(u["base_size"])))
                    else:
                        self.plain.setdefault(d, where)
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue  # a damaged line: its content is not offered

    def chain(self, path: bytes, digest: str) -> tuple[bytes, list[bytes]] | None:
        """(the file to copy, the undo records to apply to it in order), or None."""
        if self.now.get(path) == digest:
            return path, []
        undos: list[bytes] = []
        while len(undos) < 10_000:
            if digest in self.plain:
                return self.plain[digest], undos[::-1]
            if digest not in self.undo:
                return None
            where, digest, _ = self.undo[digest]
            undos.append(where)
        return None


def apply_undo(remote: Remote, where: bytes, out: Any) -> None:
    """Write an undo record's chunks into the open file out and cut it to size."""
    with os.fdopen(remote.open(where), "rb") as f:
        h = json.loads(f.readline())
        size, cs = int(h["size"]), int(h["chunk_size"])
        for i, _ in h["chunks"]:
            n = max(0, min(cs, size - int(i) * cs))
            buf = f.read(n)
            if len(buf) != n:
                raise OSError("undo record " + where.decode("utf-8", "replace") + " is short")
            out.seek(int(i) * cs)
            out.write(buf)
        out.truncate(size)


def give_meta(out: bytes, e: dict[str, Any], misses: dict[str, str]) -> None:
    """Owner (as root) and extended attributes, before the mode is set."""
    if os.geteuid() == 0 and isinstance(e.get("uid"), int) and isinstance(e.get("gid"), int):
        try:
            os.chown(out, e["uid"], e["gid"], follow_symlinks=False)
        except OSError as err:
            misses.setdefault("owners", str(err))
    xattrs = e.get("xattrs")
    if isinstance(xattrs, dict) and e.get("type") != "symlink":
        for name, value in xattrs.items():
            try:
                raw = b64decode(name[4:]) if name.startswith("b64:") else name.encode("utf-8")
                os.setxattr(out, raw, b64decode(value), follow_symlinks=False)
            except (OSError, ValueError) as err:
                misses.setdefault("extended attributes", str(err))


def safe(path: bytes) -> bool:
    return bool(path) and not path.startswith(b"/") and all(
        p not in (b"", b".", b"..") for p in path.split(b"/"))


def main(argv: list[str]) -> int:
    args = list(argv)
    if not os.path.isdir(SNAPS):
        fail(SNAPS + " is missing: is this a btsoot remote?")
    snaps = snapshots()
    if not snaps:
        fail("no snapshots in " + SNAPS)
    if args == ["--list"]:
        for one in sorted(snaps):
            print(one, "+".join(k for k, _ in snaps[one]))
        return 0
    sid: str | None = None
    if len(args) == 3 and args[0] == "--snapshot":
        sid, args = args[1], args[2:]
    if len(args) != 1:
        fail("usage: restore.py [--snapshot ID] DEST   |   restore.py --list")
    dest = os.fsencode(os.path.abspath(args[0]))
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        fail(args[0] + " must be missing or an empty folder")
    os.makedirs(dest, exist_ok=True)
    last = newest(snaps)
    sid = sid or last
    table, header = resolve(snaps, sid)
    finder = Finder(table if sid == last else resolve(snaps, last)[0])
    try:
        import xxhash  # only to check digests; the restore does not need it

        digests: Any = xxhash
    except ImportError:
        digests = None
    remote, done = Remote({p for p, e in table.items() if e.get("esc") is True}), 0
    problems: list[tuple[bytes, str]] = []
    dirs: list[tuple[bytes, dict[str, Any]]] = []
    misses: dict[str, str] = {}  # metadata the destination refused: one line per kind
    linked: dict[tuple[Any, Any], bytes] = {}  # a hard-link group's first restored path
    for path in sorted(table):
        e = table[path]
        if not safe(path):
            problems.append((path, "unsafe path, skipped"))
            continue
        out = dest + b"/" + path
        kind = e.get("type")
        try:
            if kind == "dir":
                os.makedirs(out, 0o700, exist_ok=True)
                dirs.append((out, e))
            elif kind == "symlink":
                os.symlink(field(e, "target"), out)
                give_meta(out, e, misses)
                os.utime(out, ns=(e["mtime"], e["mtime"]), follow_symlinks=False)
            elif kind == "file" and e.get("nlink", 1) > 1 and (e.get("dev"), e.get("ino")) in linked:
                os.link(linked[(e.get("dev"), e.get("ino"))], out)  # another name of it
                done += 1
            elif kind == "file":
                found = finder.chain(path, e["digest"]) if e.get("digest") else (path, [])
                if found is None:
                    problems.append((path, "its content is no longer on the remote"))
                    continue
                src = remote.open(found[0])
                with os.fdopen(src, "rb") as f, open(out, "w+b") as g:
                    while True:
                        buf = f.read(1 << 20)
                        if not buf:
                            break
                        g.write(buf)
                    for where in found[1]:
                        apply_undo(remote, where, g)
                    g.flush()
                    size = os.fstat(g.fileno()).st_size
                    h = digests.xxh3_128() if digests and e.get("digest") else None
                    if h:
                        g.seek(0)
                        for buf in iter(lambda: g.read(1 << 20), b""):
                            h.update(buf)
                if size != e.get("size", 0):
                    problems.append((path, f"size {size}, expected {e.get('size', 0)}"))
                elif h and h.hexdigest() != e["digest"]:
                    problems.append((path, "content does not match its digest"))
                give_meta(out, e, misses)
                os.chmod(out, e["mode"] & 0o7777)
                os.utime(out, ns=(e["mtime"], e["mtime"]))
                if e.get("nlink", 1) > 1:
                    linked[(e.get("dev"), e.get("ino"))] = out
                done += 1
        except OSError as err:
            problems.append((path, str(err)))
    for out, e in reversed(dirs):  # deepest first: their own changes are done
        give_meta(out, e, misses)
        os.chmod(out, e["mode"] & 0o7777)
        os.utime(out, ns=(e["mtime"], e["mtime"]))
    root = header.get("root")  # the source folder itself
    if isinstance(root, dict) and isinstance(root.get("mode"), int):
        try:
            give_meta(dest, root, misses)
            os.chmod(dest, root["mode"] & 0o7777)
            os.utime(dest, ns=(root["mtime"], root["mtime"]))
        except (OSError, KeyError, TypeError) as err:
            problems.append((b".", str(err)))
    for path, why in problems:
        shown = path.decode("utf-8", "backslashreplace")
        sys.stderr.write(f"restore.py: {shown}: {why}\n")
    for what, why in misses.items():
        sys.stderr.write(f"restore.py: warning: some {what} not restored ({why})\n")
    more = f", {len(problems)} problems" if problems else ""
    print(f"restored snapshot {sid}: {done} files into {args[0]}{more}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
