"""A bandwidth limit on what a backup sends to the remote (`--bwlimit`, `bwlimit`).

One limiter is shared by every transfer thread of a run. Each piece of data about
to be sent (a buffer of a large file, a small file whole, a patch's chunk) takes
its slot on a virtual link running at the rate: the slot starts when the link is
free and lasts size/rate; the sender waits until the slot's end, then writes. A
link idle for a while grants at most BURST seconds of credit. Over a run the
bytes sent stay within the rate (a slow real link only makes the waits
shorter); a unit of data is at most a file under 1 MiB or one buffer, so 16
threads add at most a few MiB of unevenness, nothing over a minute.

RATE: bytes per second with binary units (`500K`, `2M`, `1.5M`), or bits per
second written as such (`20Mbit`, `800kbit`: decimal, as links are sold).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

BURST = 0.5  # seconds of credit an idle link grants

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmg])(i?b|ibit|bit)?|(b|bit))?(?:/s)?", re.I)
_BYTES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_BITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_rate(text: str | int) -> int:
    """Bytes per second; 0 for no limit ("" or "0"). ValueError if it is not a rate."""
    if type(text) is int:
        if text < 0:
            raise ValueError("a rate cannot be negative")
        return text
    s = str(text).strip()
    if s in ("", "0"):
        return 0
    m = _RATE.fullmatch(s)
    if m is None:
        raise ValueError(f"{s!r} is not a rate like 2M (bytes/s) or 20Mbit (bits/s)")
    num, unit, tail, bare = float(m.group(1)), (m.group(2) or "").lower(), (m.group(3) or ""), m.group(4)
    bits = "bit" in (tail or bare or "").lower() and not tail.lower().startswith("ib")
    rate = num * (_BITS[unit] / 8 if bits else _BYTES[unit])
    if rate < 1:
        raise ValueError(f"{s!r}: a rate of at least 1 byte per second")
    return int(rate)


class Limiter:
    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self._free = clock()  # when the virtual link is free
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Wait until n more bytes may be sent."""
        if n <= 0:
            return
        with self._lock:
            now = self._clock()
            self._free = max(self._free, now - BURST) + n / self.rate
            wait = self._free - now
        if wait > 0:
            self._sleep(wait)
