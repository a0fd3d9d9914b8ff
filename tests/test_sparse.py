"""Sparse files: only their data crosses the link, their holes stay holes on the
remote and in a restore, and their digests are those of the logical content."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import xxhash

from btsoot.transfer import data_map
from conftest import Env

MiB = 1 << 20
BIG = 4 << 30  # 4 GiB, almost all hole


def sparse(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> int:
    """A file of size bytes holding pieces at their offsets, holes elsewhere;
    returns the bytes of data."""
    with open(path, "wb") as f:
        for off, data in pieces:
            f.seek(off)
            f.write(data)
        f.truncate(size)
    return sum(len(d) for _, d in pieces)


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(8 * MiB), b""):
            h.update(buf)
    return h.hexdigest()


def test_data_map_finds_the_data(tmp_path: Path) -> None:
    p = tmp_path / "s"
    sparse(p, 64 * MiB, [(8 * MiB, b"a" * MiB), (40 * MiB, b"b" * 10)])
    fd = os.open(p, os.O_RDONLY)
    try:
        segs = data_map(fd, 64 * MiB)
    finally:
        os.close(fd)
    if segs is None:
        pytest.skip("this file system does not report holes")
    assert segs[0][0] <= 8 * MiB < 9 * MiB <= segs[0][1]
    assert segs[-1][0] <= 40 * MiB < segs[-1][1] < 64 * MiB
    assert sum(e - s for s, e in segs) < 3 * MiB
    dense = tmp_path / "d"
    dense.write_bytes(b"x" * 2 * MiB)
    fd = os.open(dense, os.O_RDONLY)
    try:
        assert data_map(fd, 2 * MiB) is None  # no hole: copied whole, as ever
    finally:
        os.close(fd)


@pytest.mark.parametrize("big", [0, pytest.param(BIG, marks=pytest.mark.slow)],
                         ids=["holes-at-start-middle-end", "4GiB"])
def test_a_sparse_file_sends_its_data_and_stays_sparse(block: tuple[Env, Path, Path],
                                                       big: int) -> None:
    env, src, dst = block
    data = {
        "start-hole.img": (64 * MiB, [(60 * MiB, os.urandom(MiB))]),  # a hole first
        "middle-hole.img": (64 * MiB, [(0, os.urandom(MiB)), (63 * MiB, os.urandom(MiB))]),
        "end-hole.img": (64 * MiB, [(0, os.urandom(3 * MiB + 5))]),  # a hole last
    }
    if big:
        data = {"big.img": (big, [(5 * MiB, os.urandom(300_000)), (big // 2, b"middle" * 1000),
                                  (big - 2 * MiB, os.urandom(MiB))])}
    total = sum(sparse(src / name, size, pieces) for name, (size, pieces) in data.items())
    if any(allocated(src / name) > size // 2 for name, (size, _) in data.items()):
        pytest.skip("the source's file system does not keep holes")
    want = {name: digest(src / name) for name in data}
    r = env.run("backup", "b", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    # Only the data crossed (at the granularity of the copy buffer, 1 MiB).
    assert total <= s["bytes_sent"] < total + 8 * MiB, (s["bytes_sent"], total)
    for name, (size, _) in data.items():
        assert os.path.getsize(dst / name) == size
        assert digest(dst / name) == want[name], name
        assert allocated(dst / name) < allocated(src / name) + 8 * MiB, name
    # Restored from the remote alone: the same content, and holes again.
    out = env.root / "restored"
    r = env.run("restore", "--from", dst, "--to", out)
    assert r.returncode == 0, r.stderr
    for name, (size, _) in data.items():
        assert os.path.getsize(out / name) == size
        assert digest(out / name) == want[name], name
        assert allocated(out / name) < allocated(src / name) + 8 * MiB, name
    # A small edit in a hole: its chunk only (patched in place), and still sparse.
    name, (size, _) = next(iter(data.items()))
    with open(src / name, "r+b") as f:
        f.seek(size // 2 + 12345)
        f.write(b"edited")
    r = env.run("backup", "b", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["operations"].get("patch") == 1 and s["bytes_sent"] <= 4 * MiB, s
    assert digest(dst / name) == digest(src / name)
    assert allocated(dst / name) < allocated(src / name) + 16 * MiB
