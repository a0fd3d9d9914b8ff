"""The first backup into an empty remote, streamed: memory does not grow with the tree.

Everything is new, so the plan is known without comparing anything: a folder is
made, a file copied, a link made, a symlink written, and at the end each
folder's attributes set (deepest first, after everything inside it changed).
make_plan would hold every entry and every operation at once (several hundred
bytes a file); here the scan's snapshot is read a chunk at a time, each chunk's
operations run on the usual Executor (same journal, same crash recovery, same
transfers), and the chunk's entries go to the new snapshot with the digests the
copies learnt, in order, before the next chunk is read. What stays in memory for
the whole run: the folders (for the closing attribute pass), and the first name
of each hard-link group (its digest, for the group's other names).

The operations and their order within a chunk are the ones make_plan gives a
first backup (tests/test_first.py compares them), so a dry run's itemized list
and what the run logs describe the same thing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .execute import ExecStats, Executor
from .ops import Copy, Link, Mkdir, Op, SetAttr, Symlink, op_name
from .plan import Plan
from .snapshot import DIR, FILE, SYMLINK, Entry, SnapshotReader, SnapshotWriter

CHUNK = 8192  # entries read, sent and written at a time


@dataclass(slots=True)
class Stream:
    """Turns a first backup's snapshot into operations, chunk by chunk."""

    links: bool = True  # hard-link groups become Link ops (else each name a copy)
    firsts: dict[tuple[int, int], bytes] = field(default_factory=dict)  # group -> first name
    first_names: set[bytes] = field(default_factory=set)  # (the values of firsts)
    dirs: list[Entry] = field(default_factory=list)
    tally: Counter[str] = field(default_factory=Counter)
    files: int = 0
    copy_bytes: int = 0

    def ops(self, chunk: list[Entry]) -> list[Op]:
        mkdirs: list[Op] = []
        copies: list[Op] = []
        links: list[Op] = []
        symlinks: list[Op] = []
        for e in chunk:
            if e.kind == DIR:
                mkdirs.append(Mkdir(e.path, e))
                self.dirs.append(e)
            elif e.kind == FILE:
                self.files += 1
                if self.links and e.nlink > 1 and e.ino:
                    key = (e.dev, e.ino)
                    first = self.firsts.get(key)
                    if first is not None:
                        links.append(Link(e.path, e, first, None))
                        continue
                    self.firsts[key] = e.path
                    self.first_names.add(e.path)
                copies.append(Copy(e.path, e, None))
                self.copy_bytes += e.size
            elif e.kind == SYMLINK:
                symlinks.append(Symlink(e.path, e))
        out = mkdirs + copies + links + symlinks
        self.tally.update(op_name(op) for op in out)
        return out

    def closing(self) -> list[Op]:
        """The folders' attributes, deepest first."""
        out: list[Op] = [SetAttr(d.path, d) for d in reversed(self.dirs)]
        self.tally.update(op_name(op) for op in out)
        return out


def chunks(path: str, size: int | None = None) -> Iterator[list[Entry]]:
    with SnapshotReader(path) as r:
        yield from _chunked(r, size)


def _chunked(r: SnapshotReader, size: int | None = None) -> Iterator[list[Entry]]:
    """r's entries, size (default CHUNK) at a time."""
    size = size or CHUNK
    chunk: list[Entry] = []
    for e in r:
        chunk.append(e)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def replay(path: str, links: bool) -> Iterator[Op]:
    """The operations a streamed first backup ran, read again from its snapshot
    (for the run's item list; digests aside, the same entries)."""
    s = Stream(links=links)
    try:
        for chunk in chunks(path):
            yield from s.ops(chunk)
    except FileNotFoundError:
        return  # pruned since (a run that took a second pass keeps the second's)
    yield from s.closing()


def plan_of(s: Stream, path: str, links: bool) -> Plan:
    """The Plan a streamed run reports: its counts, its operations on demand."""
    return Plan(new_files=s.files, copy_bytes=s.copy_bytes, tally=s.tally,
                replay=lambda: replay(path, links))


def send(scan_path: str, executor: Executor, header_writer: SnapshotWriter,
         links: bool, size: int | None = None) -> tuple[ExecStats, Stream]:
    """Run the first backup of the snapshot at scan_path, writing what the remote
    then holds to header_writer (its owner names too): each entry with the digest
    its copy learnt, an entry whose transfer failed left out (the remote holds
    nothing of it). Returns the executor's stats and the stream's counts."""
    s = Stream(links=links)
    stats = executor.stats
    with SnapshotReader(scan_path) as r:
        for chunk in _chunked(r, size):
            executor.run(Plan(ops=s.ops(chunk)))
            for x in chunk:
                held = stats.held(x)
                if held is not None:
                    header_writer.write(held)
            # Learnt digests are written: only a link group's first name is
            # looked up again (by the group's names in later chunks).
            stats.updated = {p: u for p, u in stats.updated.items() if p in s.first_names}
        header_writer.names = r.names  # (the trailer: read once the last chunk was)
    executor.run(Plan(ops=s.closing()))
    return stats, s
