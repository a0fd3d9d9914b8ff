"""Snapshots: one scan of a block's source, as sorted orjson lines.

Line 1 is a header object; every further line is one entry. Entries are sorted
by `sort_key(path)`: paths compared by their components, as if b"/" sorted
before every other byte, so a directory's subtree is contiguous and directly
follows the directory. Both the reader and the writer stream, so memory does
not grow with the tree.

Paths are bytes. A path (or link target) that is valid UTF-8 is stored as text
under "path" ("target"); any other is stored as base64 of the raw bytes under
"path_b64" ("target_b64"), so every name round-trips exactly.
"""

from __future__ import annotations

import base64
import calendar
import errno
import gzip
import os
import stat
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

import orjson

from . import events
from .durable import fsync_dir
from .errors import LocalStateError, StateError
from .paths import sort_key as sort_key
from .scanner import line_path as _line_path

FORMAT = "btsoot-snapshot"
# 2: owners, ctime, hard-link counts and extended attributes (version 1 has
# none of them: its entries read with uid/gid None, "not recorded").
VERSION = 2
HASH = "xxh3-128"

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
_KINDS = (FILE, DIR, SYMLINK)


@dataclass(slots=True, frozen=True)
class Entry:
    path: bytes
    kind: str
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    ino: int = 0
    dev: int = 0
    digest: str | None = None
    chunks: tuple[str, ...] | None = None
    target: bytes | None = None
    # Stored on the remote under its escaped name (names.Codec.escape): the second
    # of two names that a case-folding remote takes for one. Kept while it exists.
    escaped: bool = False
    uid: int | None = None  # None: not recorded (a version 1 snapshot)
    gid: int | None = None
    # The status change time: moves when owner, mode, xattrs or links change, so
    # the scan reads xattrs only where it moved (0: not recorded).
    ctime_ns: int = 0
    nlink: int = 1  # a file's hard links (recorded when more than one)
    # Extended attributes (POSIX ACLs among them), sorted by name. None: not
    # known (an entry built without reading them: an attribute pass leaves the
    # remote's as they are); every entry read from a snapshot has a tuple.
    xattrs: tuple[tuple[bytes, bytes], ...] | None = ()

    def with_path(self, path: bytes) -> Entry:
        return replace(self, path=path)

    def same_content(self, other: Entry) -> bool:
        """Same kind and payload: file digest, link target; dirs always match."""
        if self.kind != other.kind:
            return False
        if self.kind == FILE:
            return self.digest == other.digest and self.size == other.size
        if self.kind == SYMLINK:
            return self.target == other.target
        return True

    def same_attrs(self, other: Entry) -> bool:
        """Same recorded metadata (an owner not recorded on one side matches any)."""
        if self.mtime_ns != other.mtime_ns or not self.same_meta(other):
            return False
        return self.kind == SYMLINK or self.mode == other.mode

    def same_meta(self, other: Entry) -> bool:
        """Same owner, group, extended attributes and hard-link group."""
        if self.uid is not None and other.uid is not None and (
                self.uid != other.uid or self.gid != other.gid):
            return False
        if (self.xattrs or ()) != (other.xattrs or ()):
            return False
        return self.link_key == other.link_key

    @property
    def link_key(self) -> tuple[int, int] | None:
        """What the file shares with its other hard links (None: it has none)."""
        return (self.dev, self.ino) if self.nlink > 1 and self.kind == FILE else None


@dataclass(slots=True, frozen=True)
class Header:
    block: str
    source: str
    id: str
    created_ns: int
    scan_started_ns: int
    source_dev: int = 0
    # The source's file system as mounts.identity() names it (survives a remount).
    source_fs: dict[str, Any] | None = None
    chunk_size: int = 0
    chunk_threshold: int = 0
    base: str | None = None  # for remote deltas: the snapshot id this applies to
    kind: str = "full"  # "full" or "delta"
    tool: str = ""
    # The source folder itself (mode, mtime, owner, xattrs as the scan began): not
    # an entry, so a restore of the whole tree gives its root these too.
    root: Entry | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "id": self.id,
            "base": self.base,
            "block": self.block,
            "source": self.source,
            "created_ns": self.created_ns,
            "scan_started_ns": self.scan_started_ns,
            "source_dev": self.source_dev,
            "source_fs": self.source_fs,
            "hash": HASH,
            "chunk_size": self.chunk_size,
            "chunk_threshold": self.chunk_threshold,
            "tool": self.tool,
            **({"root": _root_to_dict(self.root)} if self.root is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Header:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise StateError(f"{where}: not a btsoot snapshot")
        version = d.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise StateError(
                f"{where}: snapshot format version {version!r} is newer than this btsoot "
                f"understands ({VERSION}); upgrade btsoot"
            )
        if d.get("hash") != HASH:
            raise StateError(f"{where}: unknown hash algorithm {d.get('hash')!r}")
        try:
            return cls(
                block=str(d["block"]),
                source=str(d["source"]),
                id=str(d["id"]),
                created_ns=int(d["created_ns"]),
                scan_started_ns=int(d["scan_started_ns"]),
                source_dev=int(d.get("source_dev", 0)),
                source_fs=d["source_fs"] if isinstance(d.get("source_fs"), dict) else None,
                chunk_size=int(d.get("chunk_size", 0)),
                chunk_threshold=int(d.get("chunk_threshold", 0)),
                base=d.get("base"),
                kind=str(d.get("kind", "full")),
                tool=str(d.get("tool", "")),
                root=_root_from_dict(d.get("root"), where),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"{where}: bad snapshot header ({e})") from None


def _root_to_dict(e: Entry) -> dict[str, Any]:
    d = entry_to_dict(replace(e, path=b".", ino=0, dev=0, ctime_ns=0))
    for k in ("path", "type", "ino", "dev"):
        d.pop(k, None)
    return d


def _root_from_dict(d: Any, where: str) -> Entry | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise StateError(f"{where}: bad snapshot header (root)")
    e = entry_from_dict({**d, "path": "root", "type": DIR}, where)
    return replace(e, path=b"")


def new_id(now_ns: int | None = None, after: str | None = None) -> str:
    """Sortable, unique-enough snapshot id: UTC time to the microsecond.

    With `after` (the newest id known), never that id or an earlier one: after
    the clock stepped back, ids go on from `after` one microsecond at a time, so
    the newest snapshot is always the largest id. (A clock that jumped forward
    leaves one id in the future; later ids still sort after it.)
    """
    ns = time.time_ns() if now_ns is None else now_ns
    if after is not None:
        floor = id_ns(after)
        if floor is not None and ns <= floor:
            ns = floor + 1000
    secs, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs)) + f".{rest // 1000:06d}Z"


def id_ns(snap_id: str) -> int | None:
    """The time in a snapshot id, in ns; None if it is not one of new_id's."""
    try:
        t = time.strptime(snap_id[:15], "%Y%m%dT%H%M%S")
        frac = snap_id[15:]
        if len(frac) != 8 or frac[0] != "." or frac[-1] != "Z" or not frac[1:-1].isdigit():
            return None
    except ValueError:
        return None
    return calendar.timegm(t) * 1_000_000_000 + int(frac[1:-1]) * 1000


def put_bytes(d: dict[str, Any], key: str, value: bytes) -> None:
    try:
        d[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        d[key + "_b64"] = base64.b64encode(value).decode("ascii")


def get_bytes(d: dict[str, Any], key: str) -> bytes | None:
    """The bytes stored under key (text) or key_b64; ValueError if damaged."""
    if not isinstance(d, dict):
        raise ValueError("not an object")
    v = d.get(key)
    if v is not None:
        if not isinstance(v, str):
            raise ValueError(f"{key!r} is not a string")
        return v.encode("utf-8")
    v = d.get(key + "_b64")
    if v is not None:
        if not isinstance(v, str):
            raise ValueError(f"{key}_b64 is not a string")
        return base64.b64decode(v, validate=True)  # binascii.Error is a ValueError
    return None


def entry_to_dict(e: Entry) -> dict[str, Any]:
    d: dict[str, Any] = {}
    put_bytes(d, "path", e.path)
    d["type"] = e.kind
    if e.kind == FILE:
        d["size"] = e.size
    d["mtime"] = e.mtime_ns
    if e.ctime_ns:
        d["ctime"] = e.ctime_ns
    d["mode"] = e.mode
    if e.uid is not None:
        d["uid"] = e.uid
        d["gid"] = e.gid
    d["ino"] = e.ino
    d["dev"] = e.dev
    if e.nlink > 1 and e.kind == FILE:
        d["nlink"] = e.nlink
    if e.digest is not None:
        d["digest"] = e.digest
    if e.chunks is not None:
        d["chunks"] = list(e.chunks)
    if e.target is not None:
        put_bytes(d, "target", e.target)
    if e.xattrs:
        d["xattrs"] = xattrs_to_dict(e.xattrs)
    if e.escaped:
        d["esc"] = True
    return d


# Extended attribute names all start with a namespace ("user.", "trusted.", ...),
# so a key with this prefix cannot be a name stored as text.
_XB64 = "b64:"


def xattrs_to_dict(xattrs: tuple[tuple[bytes, bytes], ...]) -> dict[str, str]:
    """{name: base64 value}; a name that is not UTF-8 as "b64:" + its base64."""
    out: dict[str, str] = {}
    for name, value in xattrs:
        try:
            key = name.decode("utf-8")
        except UnicodeDecodeError:
            key = _XB64 + base64.b64encode(name).decode("ascii")
        out[key] = base64.b64encode(value).decode("ascii")
    return out


def xattrs_from_dict(d: Any) -> tuple[tuple[bytes, bytes], ...]:
    if not isinstance(d, dict):
        raise ValueError("xattrs is not an object")
    out = []
    for key, value in d.items():
        if not isinstance(value, str):
            raise ValueError("an xattr value is not a string")
        name = (base64.b64decode(key[len(_XB64):], validate=True) if key.startswith(_XB64)
                else key.encode("utf-8"))
        if not name or b"\0" in name:
            raise ValueError("bad xattr name")
        out.append((name, base64.b64decode(value, validate=True)))
    out.sort()
    return tuple(out)


def _opt_str(v: Any) -> Any:
    if v is not None and not isinstance(v, str):
        raise ValueError("digest is not a string")
    return v


def entry_from_dict(d: Any, where: str) -> Entry:
    try:
        path = get_bytes(d, "path")
        kind = d["type"]
        if path is None or kind not in _KINDS:
            raise ValueError("missing path or unknown type")
        chunks = d.get("chunks")
        size, mtime, mode = d.get("size", 0), d["mtime"], d["mode"]
        ino, dev = d.get("ino", 0), d.get("dev", 0)
        ctime, nlink, uid, gid = d.get("ctime", 0), d.get("nlink", 1), d.get("uid"), d.get("gid")
        if not all(type(v) is int for v in (size, mtime, mode, ino, dev, ctime, nlink)):
            raise ValueError("size, mtime, ctime, mode, ino, dev and nlink must be integers")
        if (uid is None) != (gid is None) or not all(
                v is None or (type(v) is int and 0 <= v < _U32) for v in (uid, gid)):
            raise ValueError("uid and gid must be given together, as 32-bit ids")
        if not (-_I64 < ctime < _I64 and 1 <= nlink < _U64):
            raise ValueError("ctime or nlink out of range")
        xattrs = d.get("xattrs")
        if not 0 <= size < _I64 or not -_I64 < mtime < _I64:
            raise ValueError("size or mtime out of range")
        if not (0 <= ino < _U64 and 0 <= dev < _U64):
            raise ValueError("ino or dev out of range")
        if not 0 <= mode <= 0o177777 or stat.S_IFMT(mode) not in (0, _IFMT[kind]):
            raise ValueError(f"mode {mode} is not one a {kind} can have")
        why = bad_path(path)
        if why is not None:
            raise ValueError(f"path {path!r} {why}")
        return Entry(
            path=path,
            kind=kind,
            size=size,
            mtime_ns=mtime,
            mode=mode,
            ino=ino,
            dev=dev,
            digest=_opt_str(d.get("digest")),
            chunks=tuple(_opt_str(c) for c in chunks) if chunks is not None else None,
            target=get_bytes(d, "target"),
            escaped=d.get("esc") is True,
            uid=uid,
            gid=gid,
            ctime_ns=ctime,
            nlink=nlink,
            xattrs=xattrs_from_dict(xattrs) if xattrs is not None else (),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"{where}: bad snapshot entry ({e})") from None


_I64 = 1 << 63  # what the kernel's times and sizes hold
_U64 = 1 << 64  # inode and device numbers
_U32 = 1 << 32  # user and group ids


def bad_path(path: bytes) -> str | None:
    """Why path cannot name an entry below a root (None if it can): every path
    read from state is checked, so none can lead a plan, a restore or a verify
    outside the remote or the destination, or into a call that refuses it."""
    if not path:
        return "has an empty path"
    if path[0] == 0x2F:
        return "is an absolute path"
    if b"\0" in path:
        return "contains a NUL byte"
    if (path[-1] == 0x2F or b"//" in path or path in (b".", b"..")
            or path.startswith((b"./", b"../")) or path.endswith((b"/.", b"/.."))
            or b"/./" in path or b"/../" in path):
        return "has an empty, '.' or '..' component"
    return None
_IFMT = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}

_INTS = ("mtime", "mode")
_OPT_INTS = ("size", "ino", "dev", "ctime", "uid", "gid", "nlink")
_OPT_STRS = ("digest", "target", "target_b64")


def _sane(obj: dict[str, Any]) -> bool:
    """Have the fields callers of raw() read directly the types they expect?"""
    for k in _INTS:
        if type(obj.get(k)) is not int:
            return False
    for k in _OPT_INTS:
        v = obj.get(k)
        if v is not None and type(v) is not int:
            return False
    for k in _OPT_STRS:
        v = obj.get(k)
        if v is not None and type(v) is not str:
            return False
    c = obj.get("chunks")
    return c is None or (type(c) is list and all(type(x) is str for x in c))


# (users, groups): id -> name on the machine that scanned, for a restore onto
# another machine (where the same name may have another id).
Names = tuple[dict[int, str], dict[int, str]]


def owner_names(d: Any) -> Names:
    """The trailer's names, leaving out anything malformed (they are a hint)."""
    out: Names = ({}, {})
    if isinstance(d, dict):
        for i, key in enumerate(("users", "groups")):
            m = d.get(key)
            if isinstance(m, dict):
                for k, v in m.items():
                    if isinstance(v, str) and k.isdigit():
                        out[i][int(k)] = v
    return out


def read_names(path: str) -> Names:
    """The owner names a snapshot file ends with (read through to its trailer)."""
    with SnapshotReader(path) as r:
        for _ in r._lines():
            pass
        return r.names


def _count(trailer: dict[str, Any], where: str) -> int:
    try:
        return int(trailer.get("count", -1))
    except (TypeError, ValueError):
        raise StateError(f"{where}: corrupt snapshot trailer") from None


def encode_entry(e: Entry) -> bytes:
    return orjson.dumps(entry_to_dict(e)) + b"\n"


def open_regular(path: str) -> IO[bytes]:
    """A record file's bytes for reading. Never through a link, and only a
    regular file: a fifo planted in its place must not hang the run."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_read(path: str) -> IO[bytes]:
    """A snapshot file for reading, gzip or plain (see open_regular)."""
    f = open_regular(path)
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        gz = gzip.GzipFile(fileobj=f, mode="rb")
        gz.myfileobj = f  # type: ignore[assignment]  # closed with it, as gzip.open closes its own
        return gz  # type: ignore[return-value]
    f.seek(0)
    return f


class SnapshotReader:
    """Streams a snapshot file: `.header`, then iterate for entries in order.

    Any damage (truncation, bad JSON, entries out of order) raises StateError
    naming the file and line: a damaged snapshot must never be mistaken for a
    smaller tree.
    """

    def __init__(self, path: str, shown: str | None = None) -> None:
        """shown: the path to name in errors (a local copy's original)."""
        self.path = shown or path
        try:
            self._f = _open_read(path)
        except OSError as e:
            raise StateError(f"{self.path}: cannot read snapshot ({e.strerror})") from None
        try:
            try:
                first = self._f.readline()
            except (OSError, EOFError, zlib.error) as e:  # a damaged gzip raises all three
                raise StateError(f"{self.path}: cannot read snapshot ({e})") from None
            try:
                self.header = Header.from_dict(orjson.loads(first), self.path)
            except orjson.JSONDecodeError:
                raise StateError(f"{self.path}: not a btsoot snapshot (bad header line)") from None
        except BaseException:
            self._f.close()
            raise
        self.records_seen = 0
        self.names: Names = ({}, {})  # from the trailer, once read to the end

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def _check_end(self) -> None:
        """Nothing follows the trailer. Reading on to the end is also what makes gzip
        check its CRC and length: without it, a remote snapshot that lost its last
        bytes, or whose data changed into other valid lines, would read as good."""
        if self._f.read(1):
            raise StateError(f"{self.path}: data after the snapshot's trailer")

    def _lines(self) -> Iterator[tuple[int, bytes | None, bytes]]:
        """(line number, path if the line is canonical else None, line) per
        entry; checks the trailer. Lines are not decoded here."""
        lineno = 1
        try:
            for line in self._f:
                lineno += 1
                if not line.endswith(b"\n"):
                    raise StateError(f"{self.path}:{lineno}: snapshot is truncated")
                p = _line_path(line)
                if p is None and line.startswith(b'{"end"') and self._trailer(line, lineno):
                    return
                yield lineno, p, line
        except (OSError, EOFError, zlib.error) as e:
            raise StateError(f"{self.path}: cannot read snapshot ({e})") from None
        raise StateError(f"{self.path}: snapshot is truncated (no trailer)")

    def _trailer(self, line: bytes, lineno: int) -> bool:
        """Is this line the trailer? Then check it, and that nothing follows."""
        obj = self._load(line, lineno)
        if not obj.get("end"):
            return False
        self.records_seen = _count(obj, self.path)
        self.names = owner_names(obj.get("names"))
        if self.records_seen != lineno - 2:
            raise StateError(f"{self.path}: entry count does not match trailer")
        self._check_end()
        return True

    def _load(self, line: bytes, lineno: int) -> dict[str, Any]:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise StateError(f"{self._where(lineno)}: corrupt snapshot line")
        return obj

    def _where(self, lineno: int) -> str:
        return f"{self.path}:{lineno}" if lineno else self.path

    def _entry(self, line: bytes, lineno: int) -> tuple[bytes, dict[str, Any]]:
        """Decode an entry line and check the fields raw() callers read directly."""
        obj = self._load(line, lineno)
        path = obj.get("path")
        try:
            p = path.encode("utf-8") if type(path) is str else get_bytes(obj, "path")
        except ValueError:
            p = None
        if p is None or obj.get("type") not in _KINDS or not _sane(obj):
            raise StateError(f"{self._where(lineno)}: bad snapshot entry")
        return p, obj

    def records(self) -> Iterator[dict[str, Any]]:
        """Raw JSON objects after the header (deltas use these)."""
        for lineno, _, line in self._lines():
            yield self._load(line, lineno)

    def raw(self) -> Iterator[tuple[bytes, dict[str, Any], bytes]]:
        """(path, decoded object, the line itself) per entry, in order.

        For callers that mostly pass entries through unchanged: they can compare
        fields on the decoded object and write the line back verbatim.
        """
        prev: bytes | None = None
        for lineno, _, line in self._lines():
            p, obj = self._entry(line, lineno)
            k = sort_key(p)
            if prev is not None and k <= prev:
                raise StateError(f"{self.path}: entries out of order at {p!r}")
            prev = k
            yield p, obj, line

    def lines(self) -> Iterator[tuple[bytes, bytes]]:
        """(path, line) per entry, in order, decoding only lines not in the
        writer's canonical form. For the scan, which compares most lines with
        the walk as bytes (`scanner.line_same`) and decodes the rest with
        `decode()`; order is checked here as in raw(). One generator, not one
        over `_lines()`: this loop runs once per entry of every backup."""
        prev = b""
        lineno = 1
        try:
            for line in self._f:
                lineno += 1
                p = _line_path(line)
                if p is None or line[-1:] != b"\n":
                    if not line.endswith(b"\n"):
                        raise StateError(f"{self.path}:{lineno}: snapshot is truncated")
                    if line.startswith(b'{"end"') and self._trailer(line, lineno):
                        return
                    p = self._entry(line, lineno)[0]
                k = p.replace(b"/", b"\x00")
                if k <= prev:
                    raise StateError(f"{self.path}: entries out of order at {p!r}")
                prev = k
                yield p, line
        except (OSError, EOFError, zlib.error) as e:
            raise StateError(f"{self.path}: cannot read snapshot ({e})") from None
        raise StateError(f"{self.path}: snapshot is truncated (no trailer)")

    def decode(self, line: bytes) -> dict[str, Any]:
        """The checked object of an entry line that lines() yielded."""
        return self._entry(line, 0)[1]

    def with_digests(self, digests: set[str]) -> Iterator[Entry]:
        """The entries whose digest is one of these, in order; the other lines are
        not decoded (the key, unescaped, cannot occur inside a JSON string)."""
        for _, line in self.lines():
            i = line.find(b'"digest":"')
            if i < 0:
                continue
            j = line.find(b'"', i + 10)
            if line[i + 10:j].decode("ascii", "replace") in digests:
                yield entry_from_dict(self.decode(line), self.path)

    def __iter__(self) -> Iterator[Entry]:
        prev: bytes | None = None
        for lineno, _, line in self._lines():
            e = entry_from_dict(self._load(line, lineno), f"{self.path}:{lineno}")
            k = sort_key(e.path)
            if prev is not None and k <= prev:
                raise StateError(f"{self.path}: entries out of order at {e.path!r}")
            prev = k
            yield e


FLUSH_BYTES = 1 << 20  # a writer's buffer (about 4,000 entries)


class SnapshotWriter:
    """Writes a snapshot atomically: temp name, fsync, rename on commit().

    A trailer line with the entry count ends the file, so a truncated copy is
    always detected. `compress=True` writes gzip (for the remote copy).
    """

    def __init__(self, path: str, header: Header, compress: bool = False,
                 local: bool = True, copy: str | None = None) -> None:
        """local: the file is in the state folder, so its I/O errors are
        LocalStateError (exit 9); else OSError, for the caller to name. copy: a
        second path that gets the very same bytes (compressed once), renamed into
        place after the first."""
        self.path = path
        self.tmp = f"{path}.tmp.{os.getpid()}"
        self.copy = copy
        self.copy_tmp = f"{copy}.tmp.{os.getpid()}" if copy is not None else None
        self._copy_raw: IO[bytes] | None = None
        self.local = local
        self.count = 0
        self._prev: bytes | None = None
        # Lines gather in one buffer, never as a list of orjson's results: each of
        # those keeps a 4 KiB allocation, whatever its length.
        self._buf = bytearray()
        # The user and group names of the ids in the entries (see owner_names).
        self.names: Names = ({}, {})
        try:
            # Never through a link planted at the temp name (the remote's copy is written here too).
            self._raw = open(self.tmp, "wb", opener=_nofollow)  # noqa: SIM115
            out: IO[bytes] = self._raw
            if self.copy_tmp is not None:
                self._copy_raw = open(self.copy_tmp, "wb", opener=_nofollow)  # noqa: SIM115
                out = _Tee(self._raw, self._copy_raw)  # type: ignore[assignment]
            self._f: IO[bytes] = (
                gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0)  # type: ignore[assignment]
                if compress
                else out
            )
            self._f.write(orjson.dumps(header.to_dict()) + b"\n")
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> OSError | LocalStateError:
        return LocalStateError.of(e, self.path) if self.local else e

    def write(self, e: Entry) -> bytes:
        """Write an entry; returns its line (for write_raw into another writer)."""
        k = sort_key(e.path)
        if self._prev is not None and k <= self._prev:
            raise ValueError(f"snapshot entries out of order at {e.path!r}")
        self._prev = k
        return self.write_record(entry_to_dict(e))
        # (after a write_raw, _prev is None: order is then the caller's guarantee)

    def write_raw(self, path: bytes, line: bytes) -> None:
        """Write an entry line as it was read from another snapshot (ends in a newline).

        The caller guarantees order (it merges sorted streams); the reader checks
        it again on every read.
        """
        self._prev = None
        self._buf += line
        self.count += 1
        if len(self._buf) >= FLUSH_BYTES:
            self._flush()

    def write_record(self, obj: dict[str, Any]) -> bytes:
        line = orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
        self._buf += line
        self.count += 1
        if len(self._buf) >= FLUSH_BYTES:
            self._flush()
        return line

    def _flush(self) -> None:
        events.point("flush")
        if self._buf:
            try:
                self._f.write(self._buf)
            except OSError as e:
                raise self._error(e) from None
            self._buf = bytearray()

    def write_all(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            self.write(e)

    def commit(self, sync: bool = True) -> str:
        self._flush()
        try:
            trailer: dict[str, Any] = {"end": True, "count": self.count}
            if self.names[0] or self.names[1]:
                trailer["names"] = {"users": {str(k): v for k, v in sorted(self.names[0].items())},
                                    "groups": {str(k): v for k, v in sorted(self.names[1].items())}}
            self._f.write(orjson.dumps(trailer) + b"\n")
            if isinstance(self._f, gzip.GzipFile):
                self._f.close()
            for raw in (self._raw, self._copy_raw):
                if raw is not None:
                    raw.flush()
                    if sync:
                        os.fsync(raw.fileno())
                    raw.close()
            # The first is whole before its copy takes its place.
            os.replace(self.tmp, self.path)
            if self.copy is not None:
                os.replace(f"{self.copy}.tmp.{os.getpid()}", self.copy)
            if sync:
                fsync_dir(os.path.dirname(self.path) or ".")
        except OSError as e:
            raise self._error(e) from None
        return self.path

    def abort(self) -> None:
        try:
            if isinstance(self._f, gzip.GzipFile):
                self._f.close()
            self._raw.close()
            if self._copy_raw is not None:
                self._copy_raw.close()
        finally:
            for tmp in (self.tmp, self.copy_tmp):
                if tmp is None:
                    continue
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass


class _Tee:
    """Two files written as one (a compressed stream written once, kept twice)."""

    def __init__(self, a: IO[bytes], b: IO[bytes]) -> None:
        self.a, self.b = a, b

    def write(self, data: bytes) -> int:
        self.a.write(data)
        self.b.write(data)
        return len(data)

    def flush(self) -> None:
        self.a.flush()
        self.b.flush()


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
