"""Blocks and the config file through the CLI: add, rm, list, and what a bad config does.

Every error a user can make here is one line on stderr, exit 2 (usage or
config error), no traceback, and nothing written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tomllib

from btsoot.config import Block, Config
from conftest import Env, assert_mirror, tree_state


def one_line_error(env: Env, *args: str | os.PathLike, says: str, code: int = 2) -> None:
    p = env.run(*args, check=code)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert p.stdout == ""


@pytest.fixture
def dirs(env: Env) -> tuple[Env, Path, Path]:
    src, dst = env.root / "src", env.root / "remote"
    src.mkdir()
    dst.mkdir()
    return env, src, dst


def test_config_round_trip(dirs: tuple[Env, Path, Path]) -> None:
    env, src, dst = dirs
    env.run("add", "photos", src, dst, "--exclude", "*.tmp", "--exclude", "cache/",
            "--max-delete", "10%", "--cross-file-systems", "--keep", "5", "--attic-days", "14",
            "--no-acls", check=0)
    env.run("add", "b2", src / ".." / "src", dst.parent / "other", check=2)  # no such remote
    (dst.parent / "other").mkdir()
    env.run("add", "b2", src / ".." / "src", dst.parent / "other", "--max-delete", "500", check=0)
    with open(env.config, "rb") as f:
        data = tomllib.load(f)
    assert data["blocks"]["photos"] == {
        "source": str(src), "remote": str(dst), "exclude": ["*.tmp", "cache/"],
        "max_delete": "10%", "one_file_system": False, "jobs": 0, "patch_in_place": True,
        "keep_last": 5, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, "keep_yearly": 0,
        "keep_within": "14d", "attic_max": "", "change_guard": True, "owners": True,
        "xattrs": True, "acls": False, "hard_links": True}
    assert data["blocks"]["b2"]["source"] == str(src)  # absolute and normalised
    cfg = Config.load(str(env.config))
    assert cfg.blocks["photos"] == Block("photos", str(src), str(dst), ["*.tmp", "cache/"], "10%",
                                         False, keep_last=5, keep_within="14d", acls=False)
    assert cfg.blocks["b2"].delete_limit(10_000) == 500
    assert cfg.blocks["photos"].delete_limit(1000) == 100
    before = env.config.read_bytes()
    cfg.save()
    assert env.config.read_bytes() == before
    rows = json.loads(env.run("list", "--json", check=0).stdout)
    assert [r["name"] for r in rows] == ["b2", "photos"]
    assert rows[1]["source"] == str(src) and rows[1]["last_run"] == {}


def test_config_option_and_env_var(dirs: tuple[Env, Path, Path]) -> None:
    env, src, dst = dirs
    other = env.root / "elsewhere" / "cfg.toml"
    env.run("--config", other, "add", "x", src, dst, check=0)
    assert other.exists() and not env.config.exists()
    assert "x" in env.run("--config", other, "list", check=0).stdout
    assert "no blocks" in env.run("list", check=0).stdout


@pytest.mark.parametrize("name", ["bad/name", "-dash", "", "a" * 65, "with space", ".hidden",
                                  "é"])
def test_add_refuses_a_bad_name(dirs: tuple[Env, Path, Path], name: str) -> None:
    env, src, dst = dirs
    one_line_error(env, "add", "--", name, src, dst, says="invalid block name")
    assert not env.config.exists()


def test_add_errors(dirs: tuple[Env, Path, Path]) -> None:
    env, src, dst = dirs
    one_line_error(env, "add", "b", env.root / "nope", dst, says="not an existing folder")
    (env.root / "file").write_text("x")
    one_line_error(env, "add", "b", env.root / "file", dst, says="not an existing folder")
    one_line_error(env, "add", "b", src, env.root / "nope", says="is the share mounted")
    one_line_error(env, "add", "b", src, dst, "--max-delete", "lots", says="--max-delete")
    one_line_error(env, "add", "b", src, dst, "--max-delete", "150%", says="--max-delete")
    (src / "inner").mkdir()
    one_line_error(env, "add", "b", src, src / "inner", says="contain one another")
    one_line_error(env, "add", "b", src / "inner", src, says="contain one another")
    one_line_error(env, "add", "b", src, src, says="contain one another")
    os.symlink(src / "inner", env.root / "sneaky")
    one_line_error(env, "add", "b", src, env.root / "sneaky", says="contain one another")
    one_line_error(env, "add", "b", "/", dst, says="contain one another")
    assert not env.config.exists()
    env.run("add", "b", src, dst, check=0)
    before = env.config.read_bytes()
    one_line_error(env, "add", "b", src, dst, says="exists already")
    assert env.config.read_bytes() == before


def test_rm_forgets_the_block_and_touches_no_data(dirs: tuple[Env, Path, Path]) -> None:
    env, src, dst = dirs
    (src / "f").write_bytes(b"data")
    env.run("add", "b", src, dst, check=0)
    env.run("add", "keep", src, env.root, check=2)  # the remote would contain the source
    env.run("backup", "b", check=0)
    data = tree_state(src), tree_state(dst, ignore_top=()), tree_state(env.state)
    p = env.run("rm", "b", check=0)
    assert "no data was touched" in p.stdout
    assert (tree_state(src), tree_state(dst, ignore_top=()), tree_state(env.state)) == data
    assert "no blocks" in env.run("list", check=0).stdout
    one_line_error(env, "rm", "b", says="no block named 'b'")
    one_line_error(env, "backup", "b", says="no block named 'b'")
    # Added again, it finds its state and remote as they were: nothing to do.
    env.run("add", "b", src, dst, check=0)
    assert "nothing" in env.run("backup", "b", check=0).stdout
    assert_mirror(src, dst)


@pytest.mark.parametrize("content, says", [
    (b"[blocks\nx = 1\n", "invalid TOML"),
    (b"blocks = 3\n", "must be a table"),
    (b'[blocks.b]\nsource = "/a"\n', "block 'b'"),  # no remote
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\ncolour = "red"\n', "block 'b'"),
    (b'[blocks.b]\nsource = 1\nremote = "/b"\n', "block 'b'"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\nmax_delete = "x%"\n', "max_delete"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\nmax_delete = "\xc2\xb2"\n', "max_delete"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\nmax_delete = true\n', "max_delete"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\nexclude = "*.tmp"\n', "exclude = '*.tmp'"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\nexclude = [5]\n', "exclude = [5]"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\njobs = "x"\n', "jobs = 'x'"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\njobs = true\n', "jobs = True"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\njobs = 100000\n', "jobs = 100000"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\none_file_system = "no"\n', "one_file_system"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\nkeep_snapshots = 0\n', "keep_snapshots = 0"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\nkeep_snapshots = -1\n', "keep_snapshots"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\nkeep_snapshots = 1.5\n', "keep_snapshots"),
    (b'[blocks.b]\nsource = "/a"\nremote = "/b"\npatch_in_place = 1\n', "patch_in_place"),
    (b'[blocks.b]\nsource = ""\nremote = "/b"\n', "source = ''"),
    (b'[blocks]\nb = 3\n', "must be a table"),
    (b'colour = "red"\n', "unknown top-level key 'colour'"),
    (b'[blocks."bad name"]\nsource = "/a"\nremote = "/b"\n', "invalid block name"),
    (b"\xff\xfe", "invalid TOML"),
])
def test_bad_config_is_one_line_exit_2(env: Env, content: bytes, says: str) -> None:
    env.config.write_bytes(content)
    one_line_error(env, "list", says=says)
    assert env.config.read_bytes() == content


def test_a_remote_moved_inside_the_source_by_an_edit_is_refused_at_every_run(
        dirs: tuple[Env, Path, Path]) -> None:
    env, src, dst = dirs
    (src / "f").write_bytes(b"data")
    env.run("add", "b", src, dst, check=0)
    env.run("backup", "b", check=0)
    inner = src / "inner"
    inner.mkdir()
    # The config edited by hand: `add` would have refused this remote.
    env.config.write_text(env.config.read_text().replace(str(dst), str(inner)))
    before = tree_state(src), tree_state(dst, ignore_top=())
    for args in (("backup", "b"), ("diff", "b"), ("backup", "--all")):
        one_line_error(env, *args, says="must not contain one another")
    assert (tree_state(src), tree_state(dst, ignore_top=())) == before


def test_a_bad_exclude_pattern_is_a_config_error(dirs: tuple[Env, Path, Path]) -> None:
    env, src, dst = dirs
    one_line_error(env, "add", "b", src, dst, "--exclude", "!", says="exclude")
    assert not env.config.exists()
    env.config.write_text(f'[blocks.b]\nsource = "{src}"\nremote = "{dst}"\nexclude = ["a\\\\"]\n')
    one_line_error(env, "backup", "b", says="exclude")
    assert os.listdir(dst) == []


@pytest.mark.parametrize("command", [("backup", "--all"), ("add", "c", ".", ".."), ("rm", "b")])
def test_every_command_reports_a_bad_config(env: Env, command: tuple[str, ...]) -> None:
    env.config.write_bytes(b"[blocks\n")
    one_line_error(env, *command, says="invalid TOML")
    assert env.config.read_bytes() == b"[blocks\n"


def test_unreadable_config_is_one_line_exit_2(env: Env) -> None:
    env.config.mkdir()  # a folder where the file should be
    one_line_error(env, "list", says="cannot read config")
