"""Hostile state read from the remote: refused fast with exit 8 (or 4), never a hang."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson


def _snapshots(dst: Path) -> list[Path]:
    return sorted((dst / ".btsoot" / "snapshots").glob("*.jsonl.gz"))


def _rewrite(path: Path, edit) -> None:
    lines = gzip.decompress(path.read_bytes()).splitlines()
    path.write_bytes(gzip.compress(b"\n".join(edit(lines)) + b"\n"))


def test_a_delta_based_on_itself_is_refused_not_followed_forever(block) -> None:
    env, src, dst = block
    (src / "a").write_bytes(b"a")
    env.run("backup", "b", check=0)
    (src / "b").write_bytes(b"b")
    env.run("backup", "b", check=0)
    delta = [p for p in _snapshots(dst) if ".delta." in p.name][-1]
    sid = delta.name.split(".")[0]

    def loop(lines: list[bytes]) -> list[bytes]:
        h = orjson.loads(lines[0])
        h["base"] = sid
        return [orjson.dumps(h), *lines[1:]]

    _rewrite(delta, loop)
    for p in _snapshots(dst):
        if ".full." in p.name:
            p.unlink()  # only the looping delta is left to resolve
    r = env.run("restore", "--from", dst, "--to", env.root / "out", timeout=30)
    assert r.returncode == 8, (r.returncode, r.stderr)
    assert "loops" in r.stderr or "broken" in r.stderr, r.stderr


def test_impossible_numbers_in_a_snapshot_are_refused(block) -> None:
    env, src, dst = block
    (src / "a").write_bytes(b"a")
    env.run("backup", "b", check=0)
    full = [p for p in _snapshots(dst) if ".full." in p.name][-1]
    for field, value in (("mtime", 1e30), ("mtime", -1e30), ("mtime", 1 << 63), ("mode", 4294967295),
                         ("size", -5)):
        def bad(lines: list[bytes], field: str = field, value: object = value) -> list[bytes]:
            out = [lines[0]]
            for line in lines[1:]:
                d = orjson.loads(line)
                if isinstance(d, dict) and d.get("path") == "a":
                    d[field] = value
                out.append(orjson.dumps(d))
            return out

        saved = full.read_bytes()
        _rewrite(full, bad)
        r = env.run("restore", "--from", dst, "--to", env.root / f"out-{field}", timeout=30)
        assert r.returncode == 8, (field, value, r.returncode, r.stderr)
        assert "internal error" not in r.stderr
        full.write_bytes(saved)


def test_restore_from_a_folder_that_is_no_backup_is_a_guard(env, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = env.run("restore", "--from", tmp_path / "empty", "--to", tmp_path / "out")
    assert r.returncode == 4 and "holds no btsoot backup" in r.stderr, r.stderr
