"""Tiered change detection, without a file system: scan.classify on walk tuples
and previous entries, and scanner.line_same on previous lines.

A walk tuple is (path, kind, size, mtime_ns, mode, ino, dev, extra), as the
compiled walk yields it; a previous entry is a snapshot line, decoded.
"""

from __future__ import annotations

import orjson
import pytest

from btsoot import scanner
from btsoot.scan import (
    HASH,
    KEEP_DIGEST,
    MOVED_MIN_SIZE,
    NOT_A_FILE,
    SAME_INODE_ELSEWHERE,
    SAME_STAT,
    SEND_UNHASHED,
    Policy,
    classify,
)
from btsoot.snapshot import Entry, entry_to_dict

T0 = 1_700_000_000_000_000_000  # the previous scan started here
RACY = T0 - 2_000_000_000
OLD = T0 - 3600 * 10**9  # modified an hour before it
DIGEST = "ab" * 16


def walked(path: bytes = b"a/f", kind: int = scanner.FILE, size: int = 100, mtime: int = OLD,
           mode: int = 0o100644, ino: int = 7, dev: int = 1, extra: bytes | None = None,
           uid: int = 1000, gid: int = 100, ctime: int = OLD, nlink: int = 1) -> tuple:
    return (path, kind, size, mtime, mode, ino, dev, extra, uid, gid, ctime, nlink)


def previous(w: tuple, **changes: object) -> dict:
    """The decoded snapshot line that records w (with changes)."""
    path, kind, size, mtime, mode, ino, dev, extra, uid, gid, ctime, nlink = w
    more = dict(uid=uid, gid=gid, ctime_ns=ctime)
    e = {scanner.FILE: Entry(path, "file", size, mtime, mode, ino, dev, DIGEST, nlink=nlink, **more),
         scanner.DIR: Entry(path, "dir", 0, mtime, mode, ino, dev, **more),
         scanner.SYMLINK: Entry(path, "symlink", size, mtime, mode, ino, dev, target=extra,
                                **more)}[kind]
    d = entry_to_dict(e)
    d.update(changes)
    return d


POLICY = Policy(racy_before=RACY)


def tier(w: tuple, old: dict | None, policy: Policy = POLICY) -> str:
    return classify(w, old, policy)[0]


def test_an_unchanged_file_folder_or_link_is_the_same_stat() -> None:
    for w in (walked(), walked(b"d", scanner.DIR, 0, mode=0o40755),
              walked(b"l", scanner.SYMLINK, 3, mode=0o120777, extra=b"a/f")):
        assert tier(w, previous(w)) == SAME_STAT


def test_a_file_changed_within_the_racy_window_is_hashed() -> None:
    w = walked(mtime=RACY + 1)
    assert tier(w, previous(w)) == HASH  # same stat, but a write in the same tick could hide
    w = walked(mtime=RACY - 1)
    assert tier(w, previous(w)) == SAME_STAT


def test_checksum_hashes_every_file_but_not_folders_or_links() -> None:
    policy = Policy(racy_before=RACY, checksum=True)
    w = walked()
    assert tier(w, previous(w), policy) == HASH
    d = walked(b"d", scanner.DIR, 0, mode=0o40755)
    assert tier(d, previous(d), policy) == SAME_STAT


def test_new_attributes_keep_the_digest_when_size_mtime_and_inode_hold() -> None:
    w = walked(mode=0o100600)
    old = previous(walked())
    assert tier(w, old) == KEEP_DIGEST


def test_size_mtime_or_inode_changed_means_hash() -> None:
    old = previous(walked())
    assert tier(walked(size=101), old) == HASH
    assert tier(walked(mtime=OLD + 1), old) == HASH
    assert tier(walked(ino=8), old) == HASH
    # An inode change is trusted to mean nothing where inodes are not stable.
    assert tier(walked(ino=8), old, Policy(racy_before=RACY, trust_inode=False)) == KEEP_DIGEST


def test_a_previous_entry_without_digest_or_of_another_kind_means_hash() -> None:
    w = walked()
    no_digest = previous(w)
    del no_digest["digest"]
    assert tier(w, no_digest) == HASH
    assert tier(w, previous(walked(kind=scanner.DIR, size=0, mode=0o40755))) == HASH


def test_folders_and_links_with_new_attributes_take_the_walks_entry() -> None:
    d = walked(b"d", scanner.DIR, 0, mode=0o40755)
    assert tier(d, previous(d, mode=0o40700)) == NOT_A_FILE
    link = walked(b"l", scanner.SYMLINK, 3, mode=0o120777, extra=b"new")
    assert tier(link, previous(walked(b"l", scanner.SYMLINK, 3, mode=0o120777, extra=b"old"))) \
        == NOT_A_FILE
    assert tier(d, None) == NOT_A_FILE


def test_new_files_are_hashed_or_left_to_the_copy() -> None:
    assert tier(walked(), None) == HASH
    assert tier(walked(), None, Policy(racy_before=RACY, hash_new=False)) == SEND_UNHASHED
    w = walked()
    assert tier(w, previous(w, size=5), Policy(racy_before=RACY, hash_new=False)) == HASH


def test_a_new_path_with_a_known_inode_takes_the_digest_found_there() -> None:
    asked = []

    def find(w: tuple) -> tuple[str, None] | None:
        asked.append(w[0])
        return (DIGEST, None) if w[5] == 7 else None

    policy = Policy(racy_before=RACY, find_moved=find)
    big = walked(b"renamed/f", size=MOVED_MIN_SIZE)
    assert classify(big, None, policy) == (SAME_INODE_ELSEWHERE, (DIGEST, None))
    assert tier(walked(b"renamed/g", size=MOVED_MIN_SIZE, ino=9), None, policy) == HASH
    # Small files are cheaper to read again than to look up: not even asked.
    assert tier(walked(b"renamed/small", size=MOVED_MIN_SIZE - 1), None, policy) == HASH
    assert asked == [b"renamed/f", b"renamed/g"]
    # A path with a previous entry is judged against that entry, not looked up.
    assert tier(walked(b"renamed/f", size=MOVED_MIN_SIZE, mtime=OLD + 5),
                previous(big), policy) == HASH
    assert asked == [b"renamed/f", b"renamed/g"]


@pytest.mark.parametrize("change", [None, "size", "mtime", "mode", "ino", "dev", "uid", "gid",
                                    "ctime", "nlink", "racy"])
def test_the_same_line_tier_holds_only_for_the_very_line(change: str | None) -> None:
    """scanner.line_same (the compiled core's or its twin's): the previous line,
    not decoded, records exactly what the walk found."""
    w = walked()
    line = orjson.dumps(previous(w)) + b"\n"
    if change is None:
        assert scanner.line_same(line, w, RACY, RACY, True)
        return
    if change == "racy":
        assert not scanner.line_same(line, w, OLD, RACY, True)  # modified at or after the bound
        assert not scanner.line_same(line, w, RACY, OLD, True)  # its status changed, likewise
        return
    i = {"size": 2, "mtime": 3, "mode": 4, "ino": 5, "dev": 6, "uid": 8, "gid": 9, "ctime": 10,
         "nlink": 11}[change]
    other = w[:i] + (w[i] + 1,) + w[i + 1:]
    assert not scanner.line_same(line, other, RACY, RACY, True)
