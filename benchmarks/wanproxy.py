#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that adds a WAN's latency (and, if asked, a rate limit).

    python3 benchmarks/wanproxy.py --listen 0 --to PORT --delay-ms 10 [--mbit 20]
    python3 benchmarks/wanproxy.py --check [--delay-ms 10] [--mbit 20]

Every connection to 127.0.0.1:LISTEN is forwarded to 127.0.0.1:TO. Every chunk of
data read on one side is written to the other side DELAY ms after it was read, in
each direction, so a request and its answer take 2 x DELAY (the round trip). The
delay is a release time, not a sleep per chunk: a direction's chunks wait in a
queue in the order they were read, and a chunk read at t leaves at t + DELAY
whatever came before it, so a stream keeps its bandwidth (a link of DELAY ms, not a
series of pauses). A new connection waits one round trip before the proxy connects
to TO and data flows (the TCP handshake a loopback connect skips).

With --mbit M each direction is also a link of M Mbit/s: a chunk leaves when the
link has finished sending the chunks before it, plus DELAY. The proxy queues at
most about one round trip's worth of the link plus 256 KiB per direction (without
a limit, 64 MiB) and stops reading that side until the queue drains, so the sender
feels TCP's back-pressure instead of filling memory.

As a command it prints the port it listens on (the first line of stdout: with
--listen 0 the system picks one) and runs until Ctrl-C or SIGTERM. `--check`
measures the proxy itself: the round trip of one byte through it (expect about
2 x DELAY) and a bulk transfer each way through it and directly on loopback.

As a module:

    with wanproxy.running(target_port, delay_ms=10, mbit=None) as proxy:
        proxy.port           # listening port
        proxy.bytes_up       # bytes forwarded client -> target so far
        proxy.bytes_down     # bytes forwarded target -> client so far

The proxy runs an asyncio loop in a background thread; leaving the `with` closes
every connection and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import selectors
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator

CHUNK = 256 * 1024
UNLIMITED_QUEUE = 64 << 20


class Proxy:
    """The proxy's state; run it with start()/stop() or `running()`."""

    def __init__(self, target_port: int, delay_ms: float, mbit: float | None = None,
                 listen_port: int = 0, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_port = listen_port
        self.delay = delay_ms / 1000.0
        self.rate = mbit * 1e6 / 8 if mbit else None  # bytes per second, each direction
        if self.rate:
            self.queue_cap = int(self.rate * 2 * self.delay) + 256 * 1024
        else:
            self.queue_cap = UNLIMITED_QUEUE
        self.port = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        self._error: BaseException | None = None
        self._late = 0.0  # how late the loop's timers fire, on average (seconds)

    # ------------------------------------------------------------------ one direction

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        """Forward reader to writer, each chunk released DELAY (plus the link's
        sending time, with a rate) after it was read, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        queued = 0
        room = asyncio.Event()
        room.set()
        link_free = 0.0  # when the link has sent everything queued so far (rate limit)

        async def receive() -> None:
            nonlocal queued, link_free
            try:
                while True:
                    while queued >= self.queue_cap:
                        room.clear()
                        await room.wait()
                    data = await reader.read(CHUNK)
                    now = loop.time()
                    if self.rate and data:
                        link_free = max(now, link_free) + len(data) / self.rate
                        release = link_free + self.delay
                    else:
                        release = max(now, link_free) + self.delay
                    queued += len(data)
                    queue.put_nowait((release, data))
                    if not data:
                        return
            except (ConnectionError, OSError):
                queue.put_nowait((loop.time(), b""))

        async def send() -> None:
            nonlocal queued
            while True:
                release, data = await queue.get()
                await self._until(loop, release)
                if not data:  # end of stream: half-close this side
                    if writer.can_write_eof() and not writer.is_closing():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                queued -= len(data)
                room.set()
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)

        rx = asyncio.create_task(receive())
        try:
            await send()
        finally:
            rx.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rx

    async def _until(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """Sleep until `when` on the loop's clock. A timer fires a little late (0.3-1 ms
        here, more under load); the lateness seen so far (a moving average) is taken
        off the next sleep, so chunks leave on time on average."""
        target = when - self._late
        wait = target - loop.time()
        if wait <= 0:
            return
        await asyncio.sleep(wait)
        late = loop.time() - target
        self._late = min(0.002, max(0.0, self._late + 0.1 * (late - self._late)))

    # ------------------------------------------------------------------ one connection

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        t_writer: asyncio.StreamWriter | None = None
        try:
            _nodelay(c_writer)
            await asyncio.sleep(2 * self.delay)  # the handshake's round trip
            t_reader, t_writer = await asyncio.open_connection(*self.target)
            _nodelay(t_writer)
            directions = [asyncio.create_task(self._pump(c_reader, t_writer, True)),
                          asyncio.create_task(self._pump(t_reader, c_writer, False))]
            try:
                # Both directions end (each side closed its half), or one fails: then
                # the connection is over for both.
                await asyncio.wait(directions, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for d in directions:
                    d.cancel()
                for d in directions:
                    with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                        await d
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:  # stop(): the connection is closed below
            pass
        finally:
            for w in (c_writer, t_writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()
            self._tasks.discard(task)

    # ------------------------------------------------------------------ the loop

    async def _main(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port,
                                            reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            await server.wait_closed()

    def _run(self, ready: threading.Event) -> None:
        # select() sleeps to the microsecond; epoll and poll round a timeout up to
        # the next millisecond, which would add up to 1 ms to every delayed chunk.
        loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as e:  # reported by start() or stop()
            self._error = e
        finally:
            ready.set()
            loop.close()

    def start(self) -> int:
        """Start listening in a background thread; the port."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="wanproxy", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None or not self.port:
            raise RuntimeError(f"wanproxy did not start: {self._error!r}")
        return self.port

    def stop(self) -> None:
        """Close every connection and the listener; wait for the thread."""
        loop, stopping = self._loop, self._stopping
        if self._thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            loop.call_soon_threadsafe(stopping.set)
        self._thread.join(15)
        self._thread = None


def _nodelay(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextlib.contextmanager
def running(target_port: int, delay_ms: float, mbit: float | None = None,
            listen_port: int = 0) -> Iterator[Proxy]:
    """A proxy to 127.0.0.1:target_port for the `with` block; yields it (.port)."""
    p = Proxy(target_port, delay_ms, mbit, listen_port)
    p.start()
    try:
        yield p
    finally:
        p.stop()


# ----------------------------------------------------------------------------- check

def _serve_test(srv: socket.socket) -> None:
    """Test server: b"E" echoes bytes back one at a time; b"U"+8 bytes n: reads n bytes,
    then answers b"K"; b"D"+8 bytes n: sends n bytes."""
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        threading.Thread(target=_test_conn, args=(conn,), daemon=True).start()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise ConnectionError("closed early")
        buf += b
    return bytes(buf)


def _test_conn(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            kind = _recv_exact(conn, 1)
            if kind == b"E":
                while b := conn.recv(1):
                    conn.sendall(b)
            elif kind == b"U":
                n = int.from_bytes(_recv_exact(conn, 8), "big")
                buf = bytearray(1 << 20)
                while n > 0:
                    got = conn.recv_into(buf, min(n, len(buf)))
                    if not got:
                        return
                    n -= got
                conn.sendall(b"K")
            elif kind == b"D":
                n = int.from_bytes(_recv_exact(conn, 8), "big")
                block = b"\x5a" * (1 << 20)
                while n > 0:
                    conn.sendall(block[:n])
                    n -= min(n, len(block))
        except OSError:
            pass


def _rtts(port: int, count: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"E")
        s.sendall(b"x")  # the first answer also waits for the proxy's handshake delay
        _recv_exact(s, 1)
        out = []
        for _ in range(count):
            t = time.perf_counter()
            s.sendall(b"x")
            _recv_exact(s, 1)
            out.append(time.perf_counter() - t)
        return out


def _bulk(port: int, n: int, up: bool) -> float:
    """Seconds to move n bytes up (until the server acknowledges) or down."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        t = time.perf_counter()
        s.sendall((b"U" if up else b"D") + n.to_bytes(8, "big"))
        if up:
            block = b"\xa5" * (1 << 20)
            left = n
            while left > 0:
                s.sendall(block[:left])
                left -= min(left, len(block))
            _recv_exact(s, 1)
        else:
            buf = bytearray(1 << 20)
            left = n
            while left > 0:
                got = s.recv_into(buf)
                if not got:
                    raise ConnectionError("closed early")
                left -= got
        return time.perf_counter() - t


def check(delay_ms: float, mbit: float | None = None, mib: int | None = None,
          pings: int = 30) -> dict[str, float]:
    """Measure a proxy of delay_ms (and mbit) in front of a test server: the round
    trip of one byte (median, min, max, in ms) and a bulk transfer each way (MB/s)
    through it and directly."""
    if mib is None:  # about 2 s at the limit, else 256 MiB
        mib = max(1, int(mbit * 1e6 / 8 * 2 / (1 << 20))) if mbit else 256
    n = mib << 20
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    threading.Thread(target=_serve_test, args=(srv,), daemon=True).start()
    direct = srv.getsockname()[1]
    try:
        with running(direct, delay_ms, mbit) as p:
            r = _rtts(p.port, pings)
            up, down = _bulk(p.port, n, True), _bulk(p.port, n, False)
        r_direct = _rtts(direct, pings)
        up_direct, down_direct = _bulk(direct, n, True), _bulk(direct, n, False)
    finally:
        srv.close()
    return {"rtt_ms_median": statistics.median(r) * 1e3, "rtt_ms_min": min(r) * 1e3,
            "rtt_ms_max": max(r) * 1e3, "loopback_rtt_ms_median": statistics.median(r_direct) * 1e3,
            "bulk_mib": mib, "up_MBps": n / up / 1e6, "down_MBps": n / down / 1e6,
            "loopback_up_MBps": n / up_direct / 1e6, "loopback_down_MBps": n / down_direct / 1e6}


def describe_check(c: dict[str, float], delay_ms: float, mbit: float | None) -> str:
    limit = f", limit {mbit:g} Mbit/s = {mbit / 8:g} MB/s" if mbit else ", no rate limit"
    return (f"proxy check (delay {delay_ms:g} ms each way{limit}): 1-byte round trip median "
            f"{c['rtt_ms_median']:.2f} ms (min {c['rtt_ms_min']:.2f}, max {c['rtt_ms_max']:.2f}; "
            f"expected {2 * delay_ms:g}; loopback {c['loopback_rtt_ms_median']:.3f}); "
            f"bulk {c['bulk_mib']} MiB up {c['up_MBps']:.0f} MB/s, down {c['down_MBps']:.0f} MB/s "
            f"(loopback {c['loopback_up_MBps']:.0f} / {c['loopback_down_MBps']:.0f} MB/s)")


# ----------------------------------------------------------------------------- command

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    ap.add_argument("--to", type=int, help="the target port on 127.0.0.1")
    ap.add_argument("--delay-ms", type=float, default=10.0, help="each way (the round trip is twice)")
    ap.add_argument("--mbit", type=float, default=None, help="rate limit per direction, Mbit/s")
    ap.add_argument("--check", action="store_true", help="measure the proxy against a test server")
    a = ap.parse_args()
    if a.delay_ms < 0 or (a.mbit is not None and a.mbit <= 0):
        ap.error("--delay-ms must be >= 0 and --mbit > 0")
    if a.check:
        print(describe_check(check(a.delay_ms, a.mbit), a.delay_ms, a.mbit))
        return 0
    if a.to is None:
        ap.error("--to PORT is needed (or --check)")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with running(a.to, a.delay_ms, a.mbit, a.listen) as p:
        print(p.port, flush=True)
        limit = f", {a.mbit:g} Mbit/s each way" if a.mbit else ""
        print(f"wanproxy: 127.0.0.1:{p.port} -> 127.0.0.1:{a.to}, {a.delay_ms:g} ms each way{limit}",
              file=sys.stderr, flush=True)
        while not done.wait(1):
            pass
        print(f"wanproxy: {p.connections} connections, {p.bytes_up:,} B up, {p.bytes_down:,} B down",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
