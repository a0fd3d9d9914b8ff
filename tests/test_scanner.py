"""The scanner core, run against both implementations on real temp directories.

Every test that takes `scan` runs once with the pure-Python twin and once with
the compiled core. The compiled run is skipped when the extension is not
built, unless BTSOOT_REQUIRE_COMPILED=1 (CI), where a missing build fails.
Golden digests were computed with `xxhsum -H2` and are pinned as literals, so
an optimisation of either implementation cannot silently change results.
"""

from __future__ import annotations

import errno
import importlib
import os
import pickle
import pwd
import socket
import stat
import subprocess
import threading
import traceback
from pathlib import Path
from types import ModuleType

import pytest
import xxhash

from btsoot._kinds import CHANGED, DIR, ERROR, FILE, SPECIAL, SYMLINK


@pytest.fixture(params=["_pyscan", "_fastscan"])
def scan(request: pytest.FixtureRequest) -> ModuleType:
    name = request.param
    try:
        return importlib.import_module(f"btsoot.{name}")
    except ImportError as e:
        if os.environ.get("BTSOOT_REQUIRE_COMPILED") == "1":
            pytest.fail(f"BTSOOT_REQUIRE_COMPILED=1 but btsoot.{name} does not import: {e}")
        pytest.skip(f"btsoot.{name} is not built ({e}); build it with `pip install -e .`")


def both_implementations() -> list[ModuleType]:
    """Twin and compiled core, for tests that compare the two directly."""
    py = importlib.import_module("btsoot._pyscan")
    try:
        fast = importlib.import_module("btsoot._fastscan")
    except ImportError as e:
        if os.environ.get("BTSOOT_REQUIRE_COMPILED") == "1":
            pytest.fail(f"BTSOOT_REQUIRE_COMPILED=1 but btsoot._fastscan does not import: {e}")
        pytest.skip(f"btsoot._fastscan is not built ({e}); build it with `pip install -e .`")
    return [py, fast]


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def paths_of(entries: list[tuple]) -> list[bytes]:
    return [e[0] for e in entries]


def pattern(n: int) -> bytes:
    """Deterministic test content: 0, 1, ..., 250, 0, 1, ..."""
    block = bytes(range(251))
    return (block * (n // 251 + 1))[:n]


def by_components(path: bytes) -> list[bytes]:
    return path.split(b"/")


# ---------------------------------------------------------------------------
# walk: order


TRICKY_NAMES = [
    b"a",
    b"a.b",
    b"a-",
    b"a0",
    b"-leading-dash",
    b"new\nline",
    b"back\\slash",
    b"not-utf8-\xff\xfe",
    b"\xc3(",
    b"n" * 255,
    b"B",
    b"~",
]


def make_tricky_tree(root: Path) -> None:
    for name in TRICKY_NAMES:
        touch(root / os.fsdecode(name) / "inside")
    # b"a" also has children whose names sort around b"/" and b"." and b"-".
    for child in [b"x", b"a", b"-", b".hidden", b"\x01", b"\xff"]:
        touch(root / "a" / os.fsdecode(child), child)
    (root / "a" / "sub" / "deeper").mkdir(parents=True)
    touch(root / "a.b" / "file")
    touch(root / "plain-file", b"x")


def test_walk_order_is_component_order(scan: ModuleType, tmp_path: Path) -> None:
    make_tricky_tree(tmp_path)
    entries = list(scan.walk(os.fsencode(tmp_path)))
    paths = paths_of(entries)
    assert len(paths) == len(set(paths))
    # Snapshot order: compare by components, so every subtree is contiguous
    # right after its directory (b"a/..." comes before b"a-", b"a.b", b"a0").
    assert paths == sorted(paths, key=by_components)
    a_subtree = [p for p in paths if p == b"a" or p.startswith(b"a/")]
    start = paths.index(b"a")
    assert paths[start : start + len(a_subtree)] == a_subtree
    assert paths[start + len(a_subtree)] == b"a-"
    assert set(paths) >= {os.path.join(b"n" * 255, b"inside"), b"new\nline/inside"}
    assert all(e[1] in (FILE, DIR) for e in entries)


def test_walk_order_same_in_both_implementations(tmp_path: Path) -> None:
    py, fast = both_implementations()
    make_tricky_tree(tmp_path)
    root = os.fsencode(tmp_path)
    assert list(fast.walk(root)) == list(py.walk(root))


def test_walk_large_and_deep_trees_match(tmp_path: Path) -> None:
    """Many long names (the name arena and entry array grow) and a tree deeper
    than the compiled walker keeps directory fds open for."""
    py, fast = both_implementations()
    for i in range(300):
        touch(tmp_path / "wide" / f"{(i * 7919) % 300:04d}-{'x' * 40}", pattern(i))
    deep = tmp_path / "deep"
    for _ in range(160):
        deep = deep / "d"
    deep.mkdir(parents=True)
    touch(deep / "bottom", b"!")
    os.symlink("bottom", deep / "link")
    root = os.fsencode(tmp_path)
    fast_entries = list(fast.walk(root))
    assert fast_entries == list(py.walk(root))
    assert len(fast_entries) == 1 + 300 + 1 + 160 + 2
    link = b"deep/" + b"d/" * 160 + b"link"
    assert [e[7] for e in fast_entries if e[0] == link] == [b"bottom"]


def test_walk_deeper_than_path_max_matches(tmp_path: Path) -> None:
    """140 levels of 40-byte names: a 5,740-byte path. Past the levels whose
    folders stay open, the compiled walk must not open by full path (that fails
    with ENAMETOOLONG beyond PATH_MAX); both walks reach the leaf."""
    py, fast = both_implementations()
    name = b"n" * 40
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(140):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        for leaf in (b"leaf", b"sub"):
            if leaf == b"sub":
                os.mkdir(leaf, dir_fd=fd)
            else:
                os.close(os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    root = os.fsencode(tmp_path)
    fast_entries = list(fast.walk(root))
    assert fast_entries == list(py.walk(root))
    deepest = b"/".join([name] * 140)
    assert {e[0] for e in fast_entries if e[1] != DIR or e[0].endswith(b"sub")} == {
        deepest + b"/leaf", deepest + b"/sub"}
    assert not [e for e in fast_entries if e[1] == ERROR]
    assert len(os.listdir("/proc/self/fd")) < 64  # no descriptor left open


# ---------------------------------------------------------------------------
# walk: what each entry says


def test_walk_reports_metadata_kinds_and_link_targets(scan: ModuleType, tmp_path: Path) -> None:
    touch(tmp_path / "file", b"hello")
    (tmp_path / "dir").mkdir()
    touch(tmp_path / "dir" / "nested", pattern(5000))
    os.chmod(tmp_path / "dir" / "nested", 0o640)
    os.symlink("file", tmp_path / "rel-link")
    os.symlink("/etc/passwd", tmp_path / "abs-link")
    os.symlink("nowhere/at/all", tmp_path / "dangling")
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    os.symlink("dir", tmp_path / "dir-link")  # reported, never followed
    long_target = "t" * 3000
    os.symlink(long_target, tmp_path / "long-link")
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.fsdecode(tmp_path / "sock"))
        entries = {e[0]: e for e in scan.walk(os.fsencode(tmp_path))}
    finally:
        sock.close()

    for rel, entry in entries.items():
        path, kind, size, mtime_ns, mode, ino, dev, extra, uid, gid, ctime_ns, nlink = entry
        st = os.lstat(tmp_path / os.fsdecode(rel))
        assert (mtime_ns, mode, ino, dev) == (st.st_mtime_ns, st.st_mode, st.st_ino, st.st_dev)
        assert (uid, gid, ctime_ns, nlink) == (st.st_uid, st.st_gid, st.st_ctime_ns, st.st_nlink)
        if kind == FILE:
            assert size == st.st_size and extra is None
        elif kind == SYMLINK:
            assert size == st.st_size
            assert extra == os.readlink(os.fsencode(tmp_path) + b"/" + rel)
        else:
            assert size == 0 and extra is None

    assert entries[b"file"][1:3] == (FILE, 5)
    assert entries[b"dir"][1] == DIR
    assert entries[b"dir/nested"][1:3] == (FILE, 5000)
    assert stat.S_IMODE(entries[b"dir/nested"][4]) == 0o640
    assert entries[b"rel-link"][1::6] == (SYMLINK, b"file")
    assert entries[b"abs-link"][1::6] == (SYMLINK, b"/etc/passwd")
    assert entries[b"dangling"][1::6] == (SYMLINK, b"nowhere/at/all")
    assert entries[b"loop-a"][1::6] == (SYMLINK, b"loop-b")
    assert entries[b"dir-link"][1::6] == (SYMLINK, b"dir")
    assert entries[b"long-link"][1::6] == (SYMLINK, long_target.encode())
    assert not any(p.startswith(b"dir-link/") for p in entries)
    assert entries[b"fifo"][1] == SPECIAL
    assert entries[b"sock"][1] == SPECIAL


def test_walk_root_errors(scan: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(scan.walk(os.fsencode(tmp_path / "missing")))
    touch(tmp_path / "plain", b"x")
    assert list(scan.walk(os.fsencode(tmp_path / "plain"))) == [
        (b"", ERROR, 0, 0, 0, 0, 0, errno.ENOTDIR, 0, 0, 0, 0)
    ]
    assert list(scan.walk(os.fsencode(tmp_path))) == list(scan.walk(os.fsencode(tmp_path) + b"/"))


def test_walk_follows_a_symlinked_root_on_another_device(scan: ModuleType, tmp_path: Path) -> None:
    """A source given as a symlink (/data -> /mnt/disk1) is walked in full
    with one_file_system: the device compared is the one listed."""
    touch(tmp_path / "real" / "sub" / "file")
    link_parent = Path("/dev/shm")  # a tmpfs: another device than tmp_path
    if not link_parent.is_dir() or os.stat(link_parent).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another device than the temp dir")
    link = link_parent / f"btsoot-test-root-{os.getpid()}"
    os.symlink(tmp_path / "real", link)
    try:
        entries = list(scan.walk(os.fsencode(link)))
    finally:
        link.unlink()
    assert paths_of(entries) == [b"sub", b"sub/file"]


def test_exclude_prunes_directory_without_descending(scan: ModuleType, tmp_path: Path) -> None:
    touch(tmp_path / "keep" / "a.txt")
    touch(tmp_path / "keep" / "b.tmp")
    for i in range(20):
        touch(tmp_path / "skip" / f"f{i}")
    touch(tmp_path / "skip" / "sub" / "deep")
    touch(tmp_path / "z.tmp")
    seen: list[tuple[bytes, bool]] = []

    def exclude(rel: bytes, is_dir: bool) -> bool:
        seen.append((rel, is_dir))
        return rel == b"skip" or rel.endswith(b".tmp")

    paths = paths_of(list(scan.walk(os.fsencode(tmp_path), exclude=exclude)))
    assert paths == [b"keep", b"keep/a.txt"]
    # The callback saw the excluded dir itself, never anything inside it.
    assert seen == [
        (b"keep", True), (b"keep/a.txt", False), (b"keep/b.tmp", False),
        (b"skip", True), (b"z.tmp", False),
    ]


def test_walk_refuses_reentry_and_can_be_abandoned(scan: ModuleType, tmp_path: Path) -> None:
    touch(tmp_path / "a" / "b")
    touch(tmp_path / "c")
    it = None

    def exclude(rel: bytes, is_dir: bool) -> bool:
        next(it)  # like a generator: "already executing"
        return False

    it = scan.walk(os.fsencode(tmp_path), exclude=exclude)
    with pytest.raises(ValueError):
        next(it)
    partial = scan.walk(os.fsencode(tmp_path))
    assert next(partial)[0] == b"a"
    del partial  # abandoned mid-walk: open directories are released


def _walk_as_unprivileged(scan: ModuleType, root: Path) -> list[tuple]:
    """Walk root as an unprivileged user: root bypasses permission bits.

    As root, a forked child changes into root (while still privileged, so the
    0700 pytest temp dirs above it do not matter), drops to `nobody` and walks
    b"."; the entries come back pickled through a pipe.
    """
    if os.geteuid() != 0:
        return list(scan.walk(os.fsencode(root)))
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.chdir(root)
            os.setgroups([])
            os.setresgid(nobody.pw_gid, nobody.pw_gid, nobody.pw_gid)
            os.setresuid(nobody.pw_uid, nobody.pw_uid, nobody.pw_uid)
            payload = pickle.dumps(("ok", list(scan.walk(b"."))))
            code = 0
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        finally:
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        status, value = pickle.loads(inp.read())
    os.waitpid(pid, 0)
    assert status == "ok", value
    return value


def test_unreadable_directory_gives_dir_then_error_and_walk_goes_on(
    scan: ModuleType, tmp_path: Path
) -> None:
    touch(tmp_path / "a" / "file")
    touch(tmp_path / "locked" / "secret")
    touch(tmp_path / "noexec" / "x")
    touch(tmp_path / "noexec" / "y")
    touch(tmp_path / "z-after" / "file")
    os.chmod(tmp_path / "locked", 0)
    os.chmod(tmp_path / "noexec", 0o644)  # listable, but its entries cannot be lstat'ed
    os.chmod(tmp_path, 0o755)  # the walk root itself stays readable
    try:
        entries = _walk_as_unprivileged(scan, tmp_path)
    finally:
        os.chmod(tmp_path / "locked", 0o755)
        os.chmod(tmp_path / "noexec", 0o755)
    got = [(e[0], e[1]) + ((e[7],) if e[1] == ERROR else ()) for e in entries]
    assert got == [
        (b"a", DIR),
        (b"a/file", FILE),
        (b"locked", DIR),
        (b"locked", ERROR, errno.EACCES),
        (b"noexec", DIR),
        (b"noexec/x", ERROR, errno.EACCES),
        (b"noexec/y", ERROR, errno.EACCES),
        (b"z-after", DIR),
        (b"z-after/file", FILE),
    ]
    assert all(e[2:7] == (0, 0, 0, 0, 0) for e in entries if e[1] == ERROR)


@pytest.fixture
def tmpfs_mount(tmp_path: Path):
    """A tmpfs mounted at tmp_path/"mnt" (root only)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.root
def test_one_file_system_yields_mount_point_but_does_not_descend(
    scan: ModuleType, tmp_path: Path, tmpfs_mount: Path
) -> None:
    touch(tmpfs_mount / "on-tmpfs")
    touch(tmp_path / "z-local")
    root = os.fsencode(tmp_path)
    root_dev = os.lstat(tmp_path).st_dev

    same = list(scan.walk(root))
    assert paths_of(same) == [b"mnt", b"z-local"]
    assert same[0][1] == DIR and same[0][6] != root_dev

    crossing = list(scan.walk(root, one_file_system=False))
    assert paths_of(crossing) == [b"mnt", b"mnt/on-tmpfs", b"z-local"]
    assert crossing[1][6] == same[0][6]


# ---------------------------------------------------------------------------
# hash_file

GOLDEN = {
    # name: (content, digest) -- digests from `xxhsum -H2` (xxHash 0.8.1)
    "empty": (b"", "99aa06d3014798d86001c324468d497f"),
    "one-byte": (b"a", "a96faf705af16834e6c632b61e964e1f"),
    "one-mib": (pattern(1 << 20), "53738d98098cabba6e0d7ac36b8c10ff"),
}
CHUNKED_CONTENT = pattern(10240)  # 2.5 chunks of 4096 bytes
CHUNKED_DIGEST = "4f6375cca7ece1e1bcd63266df6e2244"
CHUNKED_PARTS = [
    "e12cd72144990fe57135ffa504f1bc71",  # bytes 0..4095
    "b5b1e7406ecd40fd040c7b32b8767f94",  # bytes 4096..8191
    "3a56953becb30d446f7aae524477c029",  # bytes 8192..10239
]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_hash_file_golden_digests(scan: ModuleType, tmp_path: Path, name: str) -> None:
    content, digest = GOLDEN[name]
    path = touch(tmp_path / name, content)
    st = os.stat(path)
    assert scan.hash_file(os.fsencode(path), 4 << 20, 16 << 20) == (
        digest, None, len(content), st.st_mtime_ns, st.st_ino, 0
    )


def test_hash_file_golden_chunk_digests(scan: ModuleType, tmp_path: Path) -> None:
    path = os.fsencode(touch(tmp_path / "chunked", CHUNKED_CONTENT))
    digest, chunks, size, _, _, err = scan.hash_file(path, 4096, 8192)
    assert (digest, chunks, size, err) == (CHUNKED_DIGEST, CHUNKED_PARTS, 10240, 0)
    # The threshold is inclusive; above it there are no chunk digests.
    assert scan.hash_file(path, 4096, 10240)[1] == CHUNKED_PARTS
    assert scan.hash_file(path, 4096, 10241)[:2] == (CHUNKED_DIGEST, None)


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 5 * (1 << 19) + 7])
@pytest.mark.parametrize("chunk_size", [1 << 20, 3 * (1 << 19) + 1, 1000])
def test_hash_file_matches_one_shot_digests_at_buffer_edges(
    scan: ModuleType, tmp_path: Path, size: int, chunk_size: int
) -> None:
    """Buffer and chunk boundaries must never show in the digests."""
    data = pattern(size)
    path = os.fsencode(touch(tmp_path / "f", data))
    digest, chunks, got_size, _, _, err = scan.hash_file(path, chunk_size, 0)
    assert err == 0 and got_size == size
    assert digest == xxhash.xxh3_128_hexdigest(data)
    assert chunks == [
        xxhash.xxh3_128_hexdigest(data[i : i + chunk_size]) for i in range(0, size, chunk_size)
    ]


def test_hash_file_errors_are_values(scan: ModuleType, tmp_path: Path) -> None:
    target = touch(tmp_path / "target", b"data")
    os.symlink("target", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    h = scan.hash_file
    assert h(os.fsencode(tmp_path / "missing"), 4096, 8192) == (None, None, 0, 0, 0, errno.ENOENT)
    assert h(os.fsencode(tmp_path / "link"), 4096, 8192) == (None, None, 0, 0, 0, errno.ELOOP)
    assert h(os.fsencode(tmp_path), 4096, 8192) == (None, None, 0, 0, 0, errno.EISDIR)
    # A FIFO is neither blocked on nor read.
    assert h(os.fsencode(tmp_path / "fifo"), 4096, 8192) == (None, None, 0, 0, 0, errno.EINVAL)
    assert h(os.fsencode(target), 4096, 8192)[5] == 0
    with pytest.raises(ValueError):
        h(os.fsencode(target), 0, 8192)


def test_hash_file_reports_a_file_growing_while_read_as_changed(
    scan: ModuleType, tmp_path: Path
) -> None:
    path = touch(tmp_path / "growing", pattern(32 << 20))
    stop = threading.Event()
    started = threading.Event()

    def append_forever() -> None:
        with open(path, "ab", buffering=0) as f:
            while not stop.is_set():
                f.write(b"more" * 1024)
                started.set()

    writer = threading.Thread(target=append_forever, daemon=True)
    writer.start()
    try:
        assert started.wait(10)
        results = []
        for _ in range(10):
            results.append(scan.hash_file(os.fsencode(path), 4 << 20, 8 << 20))
            if results[-1][5] == CHANGED:
                break
    finally:
        stop.set()
        writer.join()
    digest, chunks, size, mtime_ns, ino, err = results[-1]
    assert err == CHANGED, [r[5] for r in results]
    assert (digest, chunks) == (None, None)
    assert size >= 32 << 20 and ino == os.stat(path).st_ino
    # Once it holds still, the same file hashes cleanly.
    settled = scan.hash_file(os.fsencode(path), 4 << 20, 8 << 20)
    assert settled[5] == 0 and settled[2] == os.stat(path).st_size


# ---------------------------------------------------------------------------
# scanner.hash_files


@pytest.mark.parametrize("threads", [1, 4])
def test_hash_files_returns_results_in_input_order(tmp_path: Path, threads: int) -> None:
    from btsoot import scanner  # here, not at the top: it may refuse a missing build

    paths = []
    for i in range(60):
        # Big and small files interleaved so workers finish out of order.
        size = (3 << 20) if i % 7 == 0 else i * 13
        paths.append(os.fsencode(touch(tmp_path / f"f{i:02d}", pattern(size)[::-1])))
    paths.insert(5, os.fsencode(tmp_path / "missing"))
    expected = [scanner.hash_file(p, 1 << 20, 2 << 20) for p in paths]
    got = list(scanner.hash_files(iter(paths), threads=threads,
                                  chunk_size=1 << 20, chunk_threshold=2 << 20))
    assert got == expected
    assert got[5][5] == errno.ENOENT
    assert got[0][1] is not None and len(got[0][1]) == 3


# --- snapshot lines: the scan's no-change fast path --------------------------

def _line(path: bytes, kind: str, **kw: object) -> bytes:
    from btsoot.snapshot import Entry, encode_entry

    return encode_entry(Entry(path, kind, **kw))  # type: ignore[arg-type]


D1, D2 = "0123456789abcdef" * 2, "fedcba9876543210" * 2


def test_line_path_reads_canonical_lines_only(scan: ModuleType) -> None:
    assert scan.line_path(_line("dir/ä b".encode(), "file", size=1, digest=D1)) == "dir/ä b".encode()
    assert scan.line_path(_line(b"d", "dir")) == b"d"
    # Anything the writer escapes or base64-encodes is left to the decoder.
    assert scan.line_path(_line(b'q"uote', "file", digest=D1)) is None
    assert scan.line_path(_line(b"tab\there", "file", digest=D1)) is None
    assert scan.line_path(_line(b"back\\slash", "file", digest=D1)) is None
    assert scan.line_path(_line(b"\xff", "file", digest=D1)) is None
    assert scan.line_path(b'{"end":true,"count":3}\n') is None
    assert scan.line_path(b'{"path":"unterminated') is None


def test_line_same_accepts_exactly_the_matching_record(scan: ModuleType) -> None:
    w = (b"a/f", FILE, 5, 1_700_000_000_123_456_789, 0o100644, 2**63 + 5, 2**40, None,
         1000, 100, 1_700_000_000_223_456_789, 1)
    c = w[10] + 1  # the ctime bound
    fields = dict(size=5, mtime_ns=w[3], mode=0o100644, ino=w[5], dev=w[6], uid=1000, gid=100,
                  ctime_ns=w[10])
    good = _line(b"a/f", "file", digest=D1, **fields)
    assert scan.line_same(good, w, w[3] + 1, c, True)
    chunked = _line(b"a/f", "file", digest=D1, chunks=(D1, D2, D1), **fields)
    assert scan.line_same(chunked, w, w[3] + 1, c, True)
    # Racy (modified too close to the last scan) or --checksum: re-read.
    assert not scan.line_same(good, w, w[3], c, True)
    assert not scan.line_same(good, w, -(2**63), c, True)
    # A status change too close to the last scan: its xattrs are read again.
    assert not scan.line_same(good, w, w[3] + 1, w[10], True)
    # Any recorded field that differs, or a missing digest.
    for change in ({"size": 6}, {"mtime_ns": w[3] - 1}, {"mode": 0o100600}, {"ino": 1}, {"dev": 1},
                   {"uid": 0}, {"gid": 0}, {"ctime_ns": w[10] - 1}, {"nlink": 2}):
        assert not scan.line_same(_line(b"a/f", "file", digest=D1, **{**fields, **change}),
                                  w, w[3] + 1, c, True), change
    assert not scan.line_same(_line(b"a/f", "file", **fields), w, w[3] + 1, c, True)
    assert not scan.line_same(_line(b"a/f", "dir", mtime_ns=w[3], mode=0o40755, ino=w[5], dev=w[6]),
                              w, w[3] + 1, c, True)
    # Hard links: the count is part of the record where links are kept, and only there.
    linked = w[:11] + (3,)
    line3 = _line(b"a/f", "file", digest=D1, nlink=3, **fields)
    assert scan.line_same(line3, linked, w[3] + 1, c, True)
    assert not scan.line_same(good, linked, w[3] + 1, c, True)
    assert scan.line_same(good, linked, w[3] + 1, c, False)
    assert not scan.line_same(line3, linked, w[3] + 1, c, False)
    # Extended attributes: never passed through unread.
    assert not scan.line_same(_line(b"a/f", "file", digest=D1, xattrs=((b"user.a", b"1"),),
                                    **fields), w, w[3] + 1, c, True)
    # A damaged digest or chunk list is never passed through unread.
    for bad in (good.replace(D1.encode(), D1[:-1].encode() + b"g"),
                good.replace(D1.encode(), D1[:-1].encode()),
                good[:-2] + b',"x":1}\n',
                good[:-1],
                chunked.replace(b"]}", b"}"),
                chunked.replace(b'","' + D2.encode(), b'",' + D2.encode())):
        assert not scan.line_same(bad, w, w[3] + 1, c, True), bad


def test_line_same_for_folders_links_and_other_kinds(scan: ModuleType) -> None:
    d = (b"d", DIR, 0, -5, 0o40755, 7, 8, None, 0, 0, -3, 2)
    line = _line(b"d", "dir", mtime_ns=-5, mode=0o40755, ino=7, dev=8, uid=0, gid=0, ctime_ns=-3)
    assert scan.line_same(line, d, 0, 0, True)  # a folder's mtime is never racy
    assert not scan.line_same(line, d, 0, -3, True)  # (its ctime is)
    assert not scan.line_same(line[:-2] + b',"digest":"x"}\n', d, 0, 0, True)
    assert not scan.line_same(_line(b"d", "dir", mtime_ns=-5, mode=0o40700, ino=7, dev=8, uid=0,
                                    gid=0, ctime_ns=-3), d, 0, 0, True)
    link = (b"d", SYMLINK, 1, -5, 0o120777, 7, 8, b"t", 0, 0, -3, 1)
    assert not scan.line_same(_line(b"d", "symlink", mtime_ns=-5, mode=0o120777, ino=7, dev=8,
                                    target=b"t", uid=0, gid=0, ctime_ns=-3), link, 0, 0, True)
    assert not scan.line_same(line, (b"d", ERROR, 0, 0, 0, 0, 0, 13, 0, 0, 0, 0), 0, 0, True)


def test_line_functions_agree_between_implementations() -> None:
    """Random records against random walk tuples: both cores give one answer,
    and it is True exactly when every recorded field matches."""
    import random

    py, fast = both_implementations()
    rng = random.Random(7)
    names = [b"a", b"b/c", "ü".encode(), b"x y", b"q\"", b"\xfe"]
    for _ in range(3000):
        kind = rng.choice(["file", "dir"])
        vals = [rng.choice([0, 1, 2**31, 2**63 - 1]) for _ in range(4)]
        ids = [rng.choice([0, 1, 2**32 - 1]) for _ in range(2)]
        mtime = rng.choice([-(2**62), -1, 0, 10**18])
        ctime = rng.choice([-1, 5, 10**18])  # (0: not recorded)
        nlink = rng.choice([1, 1, 2, 7]) if kind == "file" else 1
        e = dict(size=vals[0] if kind == "file" else 0, mtime_ns=mtime, mode=vals[1],
                 ino=vals[2], dev=vals[3], uid=ids[0], gid=ids[1], ctime_ns=ctime, nlink=nlink)
        if kind == "file" and rng.random() < 0.9:
            e["digest"] = rng.choice([D1, D2])
            if rng.random() < 0.3:
                e["chunks"] = tuple(rng.choice([D1, D2]) for _ in range(rng.randint(1, 3)))
        path = rng.choice(names)
        line = _line(path, kind, **e)
        want = [path, FILE if kind == "file" else DIR, e["size"], mtime, vals[1], vals[2], vals[3],
                None, ids[0], ids[1], ctime, nlink]
        w = list(want)
        if rng.random() < 0.5:
            # (a folder has no size, and its link count is not recorded)
            i = rng.choice([2, 3, 4, 5, 6, 8, 9, 10, 11] if kind == "file" else [3, 4, 5, 6, 8, 9, 10])
            w[i] = w[i] + 1 if w[i] < 2**63 - 1 else 0
        if rng.random() < 0.1:
            w[1] = DIR if w[1] == FILE else FILE
        bound = rng.choice([-(2**63), mtime, mtime + 1, 2**63 - 1])
        cbound = rng.choice([ctime, ctime + 1, 2**63 - 1])
        links = rng.random() < 0.8
        answers = {(m.line_path(line), m.line_same(line, tuple(w), bound, cbound, links))
                   for m in (py, fast)}
        assert len(answers) == 1, (line, w, bound, answers)
        (got_path, same), = answers
        canonical = b'"' not in path and path != b"\xfe"
        assert got_path == (path if canonical else None)
        if canonical:
            # The link count is compared only where links are kept (and recorded
            # only above one); a line that records one never matches where they are not.
            same_links = (w[11] == nlink if links else nlink == 1) or kind == "dir"
            expect = (w[:11] == want[:11] and same_links and w[10] < cbound
                      and (kind == "dir" or ("digest" in e and mtime < bound)))
            assert same == expect, (line, w, bound)


# --- small-file copies ----------------------------------------------------------

AT_FDCWD = -100  # copy_small's tmp and final are paths, not names in a folder


def test_copy_small_writes_beneath_a_folder_descriptor_never_through_a_link(
        scan: ModuleType, tmp_path: Path) -> None:
    src = touch(tmp_path / "src", b"y" * 300)
    st = src.stat()
    (tmp_path / "out").mkdir()
    (tmp_path / "victim").write_bytes(b"keep")
    dfd = os.open(tmp_path / "out", os.O_PATH | os.O_DIRECTORY)
    try:
        digest, err, _ = scan.copy_small(os.fsencode(src), dfd, b".t", b"f", 300, st.st_mtime_ns,
                                         0o644, None)
        assert err == 0 and (tmp_path / "out" / "f").read_bytes() == b"y" * 300
        # A temp name that is a symlink planted on the remote is never written through.
        os.symlink(tmp_path / "victim", tmp_path / "out" / ".t")
        assert scan.copy_small(os.fsencode(src), dfd, b".t", b"g", 300, st.st_mtime_ns, 0o644,
                               None)[1:] == (errno.ELOOP, 1)
        assert (tmp_path / "victim").read_bytes() == b"keep"
    finally:
        os.close(dfd)


def test_copy_small_copies_hashes_and_renames(scan: ModuleType, tmp_path: Path) -> None:
    data = os.urandom(5000)
    src = touch(tmp_path / "src", data)
    os.utime(src, ns=(1, 1_600_000_000_123_456_789))
    st = src.stat()
    (tmp_path / "out").mkdir()
    tmp, final = tmp_path / "out" / ".tmp", tmp_path / "out" / "f"
    digest, err, _ = scan.copy_small(os.fsencode(src), AT_FDCWD, os.fsencode(tmp), os.fsencode(final),
                                     st.st_size, st.st_mtime_ns, 0o100640, None)
    assert (digest, err) == (xxhash.xxh3_128_hexdigest(data), 0)
    assert final.read_bytes() == data and not tmp.exists()
    fst = final.stat()
    assert stat.S_IMODE(fst.st_mode) == 0o640 and fst.st_mtime_ns == st.st_mtime_ns
    # With the digest known, a match is required; empty files work too.
    empty = touch(tmp_path / "empty")
    est = empty.stat()
    assert scan.copy_small(os.fsencode(empty), AT_FDCWD, os.fsencode(tmp), os.fsencode(final), 0,
                           est.st_mtime_ns, 0o600, xxhash.xxh3_128_hexdigest(b""))[1] == 0
    assert final.read_bytes() == b""


def test_copy_small_refuses_a_changed_source_and_reports_each_side(scan: ModuleType,
                                                                   tmp_path: Path) -> None:
    src = touch(tmp_path / "src", b"x" * 100)
    st = src.stat()
    (tmp_path / "out").mkdir()
    tmp, final = os.fsencode(tmp_path / "out" / ".tmp"), os.fsencode(tmp_path / "out" / "f")
    s = os.fsencode(src)
    # Size, mtime or content not those expected: CHANGED, nothing written.
    assert scan.copy_small(s, AT_FDCWD, tmp, final, 99, st.st_mtime_ns, 0o600, None)[1] == CHANGED
    assert scan.copy_small(s, AT_FDCWD, tmp, final, 100, st.st_mtime_ns + 1, 0o600, None)[1] == CHANGED
    assert scan.copy_small(s, AT_FDCWD, tmp, final, 100, st.st_mtime_ns, 0o600, "0" * 32)[1] == CHANGED
    assert os.listdir(tmp_path / "out") == []
    # Errors say which side they come from; a failed write leaves no temp file.
    assert scan.copy_small(s + b"-gone", AT_FDCWD, tmp, final, 100, st.st_mtime_ns, 0o600, None)[1:] == (
        errno.ENOENT, 0)
    os.symlink(src, tmp_path / "link")
    assert scan.copy_small(os.fsencode(tmp_path / "link"), AT_FDCWD, tmp, final, 100, st.st_mtime_ns,
                           0o600, None)[1:] == (errno.ELOOP, 0)
    assert scan.copy_small(s, AT_FDCWD, os.fsencode(tmp_path / "no" / "t"), final, 100, st.st_mtime_ns,
                           0o600, None)[1:] == (errno.ENOENT, 1)
    os.mkdir(final)
    os.mkdir(os.path.join(final, b"full"))  # rename onto a non-empty folder fails
    assert scan.copy_small(s, AT_FDCWD, tmp, final, 100, st.st_mtime_ns, 0o600, None)[1:] == (
        errno.EISDIR, 1)
    assert sorted(os.listdir(tmp_path / "out")) == ["f"]
    with pytest.raises(ValueError):
        scan.copy_small(s, AT_FDCWD, tmp, final, scan.SMALL_COPY_MAX, 0, 0o600, None)
