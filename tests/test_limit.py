"""The bandwidth limit (limit.py): its schedule on a simulated clock (no timing in
unit tests: the benchmark benchmarks/bwlimit.py measures the real rate), and the
CLI around it."""

from __future__ import annotations

import json
import os
import threading

import pytest

from btsoot.limit import BURST, Limiter, parse_rate
from conftest import Env, assert_mirror


class Clock:
    """Time that moves only when someone sleeps (each thread's sleep is its own
    wait, so the clock is the latest time any sender reached)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        with self.lock:
            self.t += s


def test_parse_rate() -> None:
    assert parse_rate("2M") == 2 << 20 and parse_rate("500k") == 500 << 10
    assert parse_rate("20Mbit") == 2_500_000 and parse_rate("800kbit/s") == 100_000
    assert parse_rate("1.5M") == 3 << 19 and parse_rate("") == parse_rate("0") == 0
    for bad in ("fast", "-1M", "2X", "0.5"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_a_sender_waits_for_its_bytes_slot() -> None:
    c = Clock()
    lim = Limiter(1000, clock=c.now, sleep=c.sleep)
    lim.take(500)  # a fresh link: the first bytes wait for their own slot
    assert c.t == pytest.approx(1000.5)
    for _ in range(100):
        lim.take(1000)
    assert c.t == pytest.approx(1100.5)  # 100,500 bytes at 1,000 a second
    c.t += 60  # idle for a minute: at most BURST seconds of credit
    start = c.t
    for _ in range(10):
        lim.take(1000)
    assert c.t - start == pytest.approx(10 - BURST)


def test_threads_share_one_rate() -> None:
    """Four senders at once (time standing still, so no wait shortens another):
    every byte of all four takes its own slot on the one link."""
    waits: list[float] = []
    lim = Limiter(4000, clock=lambda: 1000.0, sleep=waits.append)

    def send() -> None:
        for _ in range(50):
            lim.take(400)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lim._free - 1000.0 == pytest.approx(4 * 50 * 400 / 4000)  # 20 s of link for 80,000 B
    assert max(waits) == pytest.approx(20.0) and len(waits) == 200


def test_backup_with_a_limit_sends_everything(env: Env) -> None:
    src, dst = env.root / "src", env.root / "dst"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(3000 * i))
    (src / "big").write_bytes(os.urandom(3 << 20))  # buffers, not the small-file path
    dst.mkdir()
    env.run("add", "b", src, dst, "--bwlimit", "64M", check=0)
    s = json.loads(env.run("backup", "b", "--json", "--bwlimit", "256M", check=0).stdout)
    assert s["result"] == "ok" and s["bytes_sent"] == sum(3000 * i for i in range(20)) + (3 << 20)
    assert_mirror(src, dst)
    p = env.run("backup", "b", "--bwlimit", "lots", check=2)
    assert "--bwlimit" in p.stderr and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
