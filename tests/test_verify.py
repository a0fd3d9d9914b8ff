"""`btsoot verify`: damage on a real remote is found, reported, and repaired by the next
backup; --subset slices are disjoint and cover every file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import Env, assert_mirror

NON_UTF8 = b"caf\xe9.bin"
SHOWN = "caf\\xe9.bin"  # how messages and --json show the name's undecodable byte


def make_tree(src: Path, files: int = 12) -> None:
    for i in range(files):
        d = src / f"d{i % 3}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:03d}").write_bytes(os.urandom(1000 + i * 37))
    (src / "gone-dir").mkdir()
    (src / "gone-dir/a").write_bytes(b"a" * 100)
    (src / "gone-dir/b").write_bytes(b"b" * 100)
    with open(os.fsencode(src) + b"/" + NON_UTF8, "wb") as f:
        f.write(b"non-utf-8 name")
    os.symlink("d0/f000", src / "link")


def verify(env: Env, *args: object, check: int | None = 0) -> dict:
    p = env.run("verify", "b", "--json", *args, check=check, stdin=subprocess.DEVNULL)
    return json.loads(p.stdout)


def flip_byte(path: Path, at: int = 10) -> None:
    """Change content, keeping size and mtime: only a digest can tell."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_clean_remote_verifies(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src)
    env.run("backup", "b", check=0)
    s = verify(env)
    assert s["result"] == "ok" and s["exit_code"] == 0
    assert s["checked_files"] == s["files"] == 15
    assert not (s["missing"] or s["corrupt"] or s["extra"])
    p = env.run("verify", "b", check=0)
    assert "b: verify: ok; read 15 of 15 files" in p.stdout


def test_damage_found_then_repaired_by_next_backup(block: tuple[Env, Path, Path]) -> None:
    env, src, remote = block
    make_tree(src)
    env.run("backup", "b", check=0)
    flip_byte(remote / "d0/f000")
    with open(remote / "d1/f001", "r+b") as f:
        f.truncate(500)
    os.unlink(remote / "d2/f002")
    for n in os.listdir(remote / "gone-dir"):
        os.unlink(remote / "gone-dir" / n)
    os.rmdir(remote / "gone-dir")
    os.unlink(os.fsencode(remote) + b"/" + NON_UTF8)
    os.unlink(remote / "link")
    (remote / "d0/stray").write_bytes(b"not in the snapshot")

    s = verify(env, check=7)
    assert s["result"] == "damaged"
    corrupt = {c["path"]: c["error"] for c in s["corrupt"]}
    assert set(corrupt) == {"d0/f000", "d1/f001"}
    assert "digest" in corrupt["d0/f000"] and "bytes on the remote" in corrupt["d1/f001"]
    assert sorted(s["missing"]) == sorted(["d2/f002", "gone-dir", SHOWN, "link"])
    assert s["missing_files"] == 4  # the folder's two files count
    assert s["extra"] == ["d0/stray"]
    assert s["recorded_for_next_backup"] == 6

    p = env.run("verify", "b", check=7)
    assert "corrupt   d0/f000: does not match its snapshot digest" in p.stdout
    assert "missing   gone-dir" in p.stdout and "extra     d0/stray" in p.stdout
    assert "the next backup re-sends 6 damaged paths" in p.stdout

    # Self-healing: the next backup re-sends what verify found, and says so.
    os.unlink(remote / "d0/stray")  # extras are the user's to judge: verify only lists them
    p = env.run("backup", "b", check=0)
    assert "re-sent 6 damaged" in p.stdout
    assert_mirror(src, remote)
    s = verify(env)
    assert s["result"] == "ok" and s["recorded_for_next_backup"] == 0
    p = env.run("backup", "b", check=0)
    assert "re-sent" not in p.stdout


def test_wrong_kinds_on_the_remote_are_set_aside_and_repaired(block: tuple[Env, Path, Path]) -> None:
    """A folder replaced by a file, a file by a non-empty folder, a link by a folder:
    verify reports each; the next backup moves what is in the way to
    REMOTE/.btsoot/damaged/ (kept, never deleted) and puts the right entry back."""
    env, src, remote = block
    make_tree(src)
    env.run("backup", "b", check=0)
    for n in os.listdir(remote / "gone-dir"):
        os.unlink(remote / "gone-dir" / n)
    os.rmdir(remote / "gone-dir")
    (remote / "gone-dir").write_bytes(b"a file where a folder was")
    os.unlink(remote / "d1/f001")
    (remote / "d1/f001").mkdir()
    (remote / "d1/f001/inside").write_bytes(b"a folder where a file was")
    os.unlink(remote / "link")
    (remote / "link").mkdir()

    s = verify(env, check=7)
    assert {c["path"] for c in s["corrupt"]} == {"gone-dir", "d1/f001", "link"}
    p = env.run("backup", "b", "--json", check=0)
    out = json.loads(p.stdout)
    assert sorted(a["path"] for a in out["set_aside"]) == ["d1/f001", "gone-dir", "link"]
    assert_mirror(src, remote)
    kept = sorted((remote / a["to"]).is_dir() for a in out["set_aside"])
    assert kept == [False, True, True]
    assert any((remote / a["to"] / "inside").read_bytes() == b"a folder where a file was"
               for a in out["set_aside"] if a["path"] == "d1/f001")
    assert verify(env)["result"] == "ok"


def test_subset_slices_are_disjoint_and_cover_everything(block: tuple[Env, Path, Path]) -> None:
    env, src, remote = block
    make_tree(src, files=40)
    env.run("backup", "b", check=0)
    files = []
    for dirpath, _dirs, names in os.walk(os.fsencode(remote)):
        if b"/.btsoot" in dirpath:
            continue
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                flip_byte(Path(os.fsdecode(p)), at=1)
                rel = os.path.relpath(p, os.fsencode(remote))
                files.append(rel.decode("utf-8", "backslashreplace"))
    assert len(files) == 43
    n = 4
    slices = []
    for k in range(1, n + 1):
        s = verify(env, "--subset", f"{k}/{n}", check=None)
        slices.append({c["path"] for c in s["corrupt"]})
        assert s["checked_files"] == len(slices[-1])
        assert s["exit_code"] == (7 if slices[-1] else 0)
    assert set().union(*slices) == set(files)
    assert sum(len(x) for x in slices) == len(files)  # disjoint
    assert all(slices)  # 43 files over 4 slices: none empty
    # Deterministic: the same slice again reads the same files.
    again = verify(env, "--subset", f"2/{n}", check=None)
    assert {c["path"] for c in again["corrupt"]} == slices[1]


def test_sample(block: tuple[Env, Path, Path]) -> None:
    env, src, _ = block
    make_tree(src, files=300)
    env.run("backup", "b", check=0)
    s = verify(env, "--sample", "50")
    assert 0 < s["checked_files"] < s["files"] == 303
    assert verify(env, "--sample", "100")["checked_files"] == 303


def test_bad_arguments_and_unmounted_remote(block: tuple[Env, Path, Path]) -> None:
    env, src, remote = block
    make_tree(src)
    env.run("backup", "b", check=0)
    for args in (["--subset", "0/3"], ["--subset", "4/3"], ["--subset", "x"],
                 ["--subset", "1/2", "--sample", "5"], ["--sample", "0"]):
        env.run("verify", "b", *args, check=2)
    # An unmounted share looks empty: that is a guard, not damage to remember.
    hidden = remote.parent / "hidden"
    os.rename(remote, hidden)
    remote.mkdir()
    p = env.run("verify", "b", check=4)
    assert "block.json" in p.stderr
    assert not (env.state / "blocks/b/damaged.jsonl").exists()
    os.rmdir(remote)
    os.rename(hidden, remote)
    verify(env)


def test_next_reads_every_file_once_per_cycle_from_a_kept_cursor(block: tuple[Env, Path, Path]) -> None:
    """`--next 1/4` four times reads four disjoint slices that together are every
    file (each file damaged here, so each run names what it read); the fifth run
    starts the cycle again. A run that cannot verify does not move the cursor, and
    another N starts at slice 1."""
    env, src, dst = block
    make_tree(src, 60)
    env.run("backup", "b", check=0)
    for p in dst.rglob("f0*"):
        flip_byte(p)
    seen: list[set[str]] = []
    checked = 0
    for want in (1, 2, 3, 4):
        v = verify(env, "--next", "1/4", check=7)
        assert v["rotation"] == {"first": want, "count": 1, "of": 4, "next": want % 4 + 1}, v
        seen.append({c["path"] for c in v["corrupt"]})
        checked += v["checked_files"]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 60  # disjoint, complete
    assert checked == v["files"]  # and the files not damaged were each read once too
    dst.rename(dst.with_name("away"))  # not mounted: refused, the cursor stays
    env.run("verify", "b", "--next", "1/4", check=4)
    dst.with_name("away").rename(dst)
    v = verify(env, "--next", "1/4", check=7)
    assert v["rotation"]["first"] == 1 and {c["path"] for c in v["corrupt"]} == seen[0]
    v = verify(env, "--next", "2/3", check=7)
    assert v["rotation"] == {"first": 1, "count": 2, "of": 3, "next": 3}, v
    line = env.run("verify", "b", "--next", "2/3", check=7).stdout
    assert "slice 3-1 of 3 (next: 2)" in line, line
    p = env.run("verify", "b", "--next", "1/4", "--subset", "1/4", check=None)
    assert p.returncode != 0 and "one of --subset, --sample and --next" in p.stderr
