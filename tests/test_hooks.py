"""Hooks and health-check pings (hooks.py): real CLI runs, real shell commands, and
a real HTTP server on 127.0.0.1 standing in for a healthchecks-style service."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import tomli_w
import tomllib

from conftest import Env


class Service:
    """What the pinged server heard: (path, body) in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, bytes]] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server interface
                n = int(self.headers.get("Content-Length") or 0)
                service.heard.append((self.path, self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping/abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [p for p, _ in self.heard]


@pytest.fixture
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.server.shutdown()
    s.server.server_close()


def configure(env: Env, **keys: object) -> None:
    cfg = tomllib.loads(env.config.read_text())
    cfg["blocks"]["b"].update(keys)
    env.config.write_text(tomli_w.dumps(cfg))


def hook(out: Path) -> str:
    """A hook command that keeps its stdin and the variables it was given."""
    return (f"cat > {out}.json; env | grep ^BTSOOT_ | sort > {out}.env")


@pytest.fixture
def block(env: Env, service: Service) -> tuple[Env, Path, Path]:
    src, dst = env.root / "src", env.root / "dst"
    (src / "d").mkdir(parents=True)
    (src / "d/a.txt").write_text("a")
    dst.mkdir()
    env.run("add", "b", src, dst, "--ping-url", service.url, check=0)
    h = env.root / "hook"
    configure(env, on_success=hook(h / "success"), on_failure=hook(h / "failure"),
              on_always=hook(h / "always"))
    h.mkdir()
    return env, src, dst


def test_a_successful_run_pings_start_and_0_and_runs_its_hooks(block, service: Service) -> None:
    env, _, _ = block
    h = env.root / "hook"
    out = json.loads(env.run("backup", "b", "--json", check=0).stdout)
    assert service.paths() == ["/ping/abc/start", "/ping/abc/0"]
    assert json.loads(service.heard[1][1])["result"] == "ok"
    got = json.loads((h / "success.json").read_bytes())
    assert got["result"] == "ok" and got["exit_code"] == 0 and got["block"] == "b"
    assert "BTSOOT_EXIT_CODE=0" in (h / "success.env").read_text()
    assert (h / "always.json").exists() and not (h / "failure.json").exists()
    assert out["hooks"] == []


def test_a_failed_run_pings_its_exit_code_and_runs_on_failure(block, service: Service) -> None:
    env, _, dst = block
    env.run("backup", "b", check=0)
    dst.rename(env.root / "unplugged")  # the share is not mounted
    p = env.run("backup", "b", check=4)
    assert service.paths()[-2:] == ["/ping/abc/start", "/ping/abc/4"]
    got = json.loads((env.root / "hook/failure.json").read_bytes())
    assert got["result"] == "failed" and got["exit_code"] == 4 and "does not exist" in got["error"]
    assert "BTSOOT_EXIT_CODE=4" in (env.root / "hook/failure.env").read_text()
    assert "Traceback" not in p.stderr


def test_a_failing_or_hanging_hook_changes_nothing_but_a_warning(block, service: Service) -> None:
    env, _, _ = block
    configure(env, on_success="echo broken >&2; exit 3", on_always="sleep 60", hook_timeout=1)
    t = time.monotonic()
    p = env.run("backup", "b", "--json", check=0)
    assert time.monotonic() - t < 30
    s = json.loads(p.stdout)
    assert s["result"] == "ok" and s["exit_code"] == 0
    assert s["hooks"] == ["on_success hook exited 3: broken", "on_always hook killed after 1 s"]
    assert "warning: on_always hook killed after 1 s" in p.stderr
    assert service.paths()[-1] == "/ping/abc/0"  # the ping still went


def test_a_ping_that_cannot_reach_the_service_changes_nothing(block, service: Service) -> None:
    env, _, _ = block
    configure(env, ping_url="http://127.0.0.1:9/nobody-listens", hook_timeout=2)
    p = env.run("backup", "b", check=0)
    assert p.stderr.count("warning: ping http://127.0.0.1:9/nobody-listens") == 2, p.stderr
    assert (env.root / "hook/success.json").exists()


def test_a_block_without_a_successful_run_for_too_long_alerts(block, service: Service) -> None:
    """A guard that stops every night: each run fails the same way, and once the
    last successful run is older than stale_after the failure says so too."""
    env, src, _ = block
    configure(env, stale_after="2d")
    env.run("backup", "b", check=0)
    runs = env.state / "blocks/b/runs.jsonl"
    lines = [orjson.loads(ln) for ln in runs.read_bytes().splitlines()]
    for r in lines:
        r["started"] -= 3 * 86_400  # that success was three days ago
    runs.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    for p in src.rglob("*"):
        if p.is_file():
            p.unlink()  # the source looks unmounted: the guard stops the run (exit 4)
    env.run("backup", "b", check=4)
    env_text = (env.root / "hook/failure.env").read_text()
    assert "BTSOOT_STALE_DAYS=3.0" in env_text, env_text
    assert json.loads((env.root / "hook/failure.json").read_bytes())["stale_days"] >= 3
    # Fixed: a successful run is not stale, whatever came before.
    (src / "d/a.txt").write_text("back")
    assert json.loads(env.run("backup", "b", "--json", check=0).stdout).get("stale_days") is None
    assert service.paths()[-1] == "/ping/abc/0"


def test_no_hooks_and_no_pings_on_a_dry_run(block, service: Service) -> None:
    env, _, _ = block
    env.run("backup", "b", "--dry-run", check=0)
    assert service.heard == [] and not any((env.root / "hook").iterdir())


def test_bad_hook_settings_are_refused_in_one_line(env: Env) -> None:
    src, dst = env.root / "src", env.root / "dst"
    src.mkdir()
    dst.mkdir()
    for args in (("--ping-url", "ftp://example.org/x"), ("--stale-after", "soon")):
        p = env.run("add", "b", src, dst, *args)
        assert p.returncode != 0 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
