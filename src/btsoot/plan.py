"""Plan: the remote operations that turn the old snapshot into the new one.

Pass 1 merges the two sorted snapshots and keeps only what differs (memory is
O(changes)). Then, in memory over those differences:

1. Folder moves. Every added file whose content is also among the removed
   files votes for the top-most (removed folder, added folder) pair that its
   two paths share a suffix below. Winning pairs become one rename each,
   whatever the folder's size; the moved subtree is then compared entry by
   entry at its new place, so a renamed folder with a few edited files costs
   one rename plus those files.
2. Content sourcing. A file that needs new content takes it, in this order of
   preference, from: content leaving the remote anyway (a removed file, or the
   old content of an updated one) by rename; content staying on the remote by
   a remote-side copy; else the source, by transfer (of a large file whose
   chunk digests show few changes: only those chunks, patched in place). Leaving content is first
   moved aside into the run's stash (`.btsoot/stash/RUN/`), which makes swaps
   and chains of renames (a->b, b->a) safe with no ordering puzzle.
3. Obstacles. Where the new tree creates a path that the old one holds with
   another kind (a file became a folder), the old entry is moved to the stash
   first; its content can still serve as a source.

Execution order (see `Plan.ops`): structure (stash obstacles, mkdir, folder
moves, top-down), stash sources, transfers, renames out of the stash,
symlinks, deletions (files, then folders deepest first), attributes (folders
deepest first, after everything inside them changed).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import events
from .diff import Diff as Diff
from .diff import diff_streams as diff_streams
from .ops import DAMAGED as DAMAGED
from .ops import PATCH as PATCH
from .ops import STASH as STASH
from .ops import Copy as Copy
from .ops import Delete as Delete
from .ops import Link as Link
from .ops import Mkdir as Mkdir
from .ops import Move as Move
from .ops import Op as Op
from .ops import RemoteCopy as RemoteCopy
from .ops import Retire as Retire
from .ops import Rmdir as Rmdir
from .ops import SetAttr as SetAttr
from .ops import Symlink as Symlink
from .ops import op_name as op_name
from .paths import is_under as is_under
from .paths import merge as merge
from .paths import parent as parent
from .scanner import CHUNK_SIZE
from .snapshot import DIR, FILE, SYMLINK, Entry, sort_key

PATCH_MAX_SHARE = 0.5


@dataclass(slots=True)
class Plan:
    ops: list[Op] = field(default_factory=list)
    old_files: int = 0
    new_files: int = 0
    deleted_files: int = 0  # content that leaves the remote for good
    modified_files: int = 0  # files whose content at their path is replaced
    # Of the modified and deleted files, those unchanged since before `stale_before`
    # (see make_plan): what ransomware touches and a person rarely does.
    stale_changes: int = 0
    copy_bytes: int = 0
    folder_moves: int = 0
    file_moves: int = 0
    # A plan run a chunk at a time (first.py) holds no ops: its counts, and its
    # operations read again on demand.
    tally: Counter[str] | None = None
    replay: Callable[[], Iterator[Op]] | None = None

    @property
    def empty(self) -> bool:
        return not self.ops and not self.tally

    def count(self) -> Counter[str]:
        if self.tally is not None:
            return Counter(self.tally)
        c: Counter[str] = Counter()
        for op in self.ops:
            c[op_name(op)] += 1
        return c

    def all_ops(self) -> Iterable[Op]:
        return self.replay() if self.replay is not None else self.ops


# --- helpers ----------------------------------------------------------------

def _rebase(path: bytes, top: bytes, new_top: bytes) -> bytes:
    return new_top + path[len(top):]


def _vote(old: bytes, new: bytes, rdirs: set[bytes], adirs: set[bytes]) -> tuple[bytes, bytes] | None:
    """The top-most (removed dir, added dir) pair under which old and new share their tail."""
    oc, nc = old.split(b"/"), new.split(b"/")
    k = 0
    while k < min(len(oc), len(nc)) - 1 and oc[-1 - k] == nc[-1 - k]:
        k += 1
    # k components of tail are shared; try the highest split point first.
    for j in range(k, 0, -1):
        x, y = b"/".join(oc[:-j]), b"/".join(nc[:-j])
        if x in rdirs and y in adirs:
            return x, y
    return None


# --- the planner ------------------------------------------------------------

@events.in_phase("plan")
def make_plan(
    open_old: Callable[[], Iterable[Entry]],
    open_new: Callable[[], Iterable[Entry]],
    run_id: str = "run",
    diff: Diff | None = None,
    patch: bool = True,
    fold: Callable[[bytes], bytes] | None = None,
    attic: bool = False,
    stale_before: int | None = None,
    links: bool = True,
    held: tuple[bool, bool] = (False, False),
) -> Plan:
    """Plan the operations from old (what the remote holds) to new.

    open_old/open_new return fresh snapshot-ordered streams. `diff` is pass 1
    when the caller has it already (the scan collects it); otherwise both
    streams are merged here. A second, streaming pass runs only when needed:
    to find content that stays on the remote (for remote-side copies) and,
    without `diff.dirs`, the entries of unchanged folders whose mtime must be
    set again because something inside them changed. patch=False never plans
    in-place updates of large files (always whole copies). attic: content that
    leaves the mirror (a file or link deleted, a file replaced by a whole copy)
    is moved into the attic (Retire) instead of deleted. `fold` maps a path to
    the one a case-folding remote takes it for: an old entry that only differs
    in case from a new one is an obstacle like any other (stashed before the new
    one is written, else writing one and deleting the other hits the same file).
    links: the members of a hard-link group take their content once (Link ops).
    held: (owners, extended attributes) the remote keeps: a change of only what
    it does not keep needs no operation (the snapshot records it).
    """
    plan = Plan()
    if diff is None:
        diff = diff_streams(open_old(), open_new())
    plan.old_files, plan.new_files = diff.old_files, diff.new_files
    # Files whose content stays where it is (untouched, or only their attributes
    # changed): sources for remote-side copies.
    staying_files = diff.unchanged_files + sum(
        1 for o, n in diff.changed if n.kind == FILE and o.same_content(n))
    removed = dict(diff.removed)
    added = dict(diff.added)
    changed = list(diff.changed)

    dir_moves = _folder_moves(removed, added)
    move_entries = {y: added[y] for _, y in dir_moves}
    moved_content: dict[str, bytes] = {}  # content that moved with its folder and stays
    for x, y in dir_moves:
        # Re-home the moved subtree: compare it entry by entry at its new place.
        for p in [p for p in removed if is_under(p, x)]:
            e = removed.pop(p)
            q = _rebase(p, x, y)
            n = added.get(q)
            if n is not None and n.kind == e.kind:
                del added[q]
                if not (e.same_content(n) and e.same_attrs(n)):
                    changed.append((e.with_path(q), n))
                if e.kind == FILE and e.digest and e.same_content(n):
                    moved_content.setdefault(e.digest, q)
            else:
                removed[q] = e.with_path(q)
    plan.folder_moves = len(dir_moves)

    # Content sourcing ----------------------------------------------------------
    updates = [(o, n) for o, n in changed if n.kind == FILE and not o.same_content(n)]
    plan.modified_files = len(updates)
    if stale_before is not None:
        plan.stale_changes = sum(1 for o, _ in updates if o.mtime_ns < stale_before)
    targets: list[tuple[Entry, Entry | None]] = [
        (n, None) for n in added.values() if n.kind == FILE
    ] + [(n, o) for o, n in updates]
    targets.sort(key=lambda t: sort_key(t[0].path))
    leaving: dict[str, list[bytes]] = defaultdict(list)
    for p, e in sorted(removed.items(), key=lambda kv: sort_key(kv[0])):
        if e.kind == FILE and e.digest:
            leaving[e.digest].append(p)
    for o, _ in updates:
        if o.digest:
            leaving[o.digest].append(o.path)
    leaves = set(diff.removed)
    leaves.update(o.path for o, n in diff.changed if not o.same_content(n))
    written = {n.path for n, _ in targets}
    # Hard links: of a group's members that need content, the first takes it like
    # any file; the others become links to it, or to a member that stays on the
    # remote, once it is in place.
    link_to: dict[tuple[int, int], bytes] = {}
    later: list[tuple[Entry, Entry | None]] = []
    keys = {n.link_key for n, _ in targets if n.link_key is not None} if links else set()
    missing = {n.digest for n, _ in targets if n.digest and n.digest not in leaving}
    staying: dict[str, bytes] = {}
    if (missing or keys) and staying_files:
        staying, link_to = _find_staying(open_old, missing, keys, leaves)
    if keys:
        firsts = []
        for n, was in targets:
            key = n.link_key
            if key is not None and key in link_to:
                later.append((n, was))
                continue
            if key is not None:
                link_to[key] = n.path
            firsts.append((n, was))
        targets = firsts
    for digest, q in moved_content.items():  # in place once the folder moves ran
        if digest in missing:
            staying.setdefault(digest, q)

    stash_of: dict[bytes, bytes] = {}  # original path -> its place in the stash

    def stash(path: bytes) -> Move:
        s = STASH + b"/" + run_id.encode() + b"/" + str(len(stash_of) + 1).encode()
        stash_of[path] = s
        return Move(path, s)

    def loc(path: bytes) -> bytes:
        """Where an old entry is once the obstacles above it went to the stash."""
        p = path
        while p:
            s = stash_of.get(p)
            # Only a stashed folder took entries below it along: below a stashed file
            # or link are the entries of a folder moved onto its path, still in place.
            if s is not None and (p == path or _is_dir(removed.get(p))):
                return s + path[len(p):]
            p = parent(p)
        return path

    # Structure, top-down: stash what blocks a path right before it is created.
    created = set(added) | set(move_entries)
    obstacles = {p for p in removed if p in created}
    blockers: dict[bytes, list[bytes]] = defaultdict(list)  # created path -> its case twins
    if fold is not None:
        folded = {fold(q): q for q in created}
        for p in removed:
            twin = folded.get(fold(p))
            if twin is not None and twin != p:
                obstacles.add(p)
                blockers[twin].append(p)
    structure: dict[bytes, Op | None] = {p: None for p in obstacles}
    for x, y in dir_moves:
        structure[y] = Move(x, y, move_entries[y])
    for p, e in added.items():
        if e.kind == DIR:
            structure[p] = Mkdir(p, e)
    ops: list[Op] = []
    for p in sorted(structure, key=sort_key):
        for b in sorted(blockers.get(p, ()), key=sort_key):
            if loc(b) == b:
                ops.append(stash(b))  # before its case twin is made
        if p in obstacles and loc(p) == p:
            ops.append(stash(p))
        op = structure[p]
        if isinstance(op, Move):
            # The folder may sit inside an obstacle stashed just before (a folder that
            # became a file): move it from where it is now.
            op = Move(loc(op.src), op.dst, op.entry)
        if op is not None:
            ops.append(op)

    # Sources: leaving content goes through the stash to the targets using it.
    uses: dict[bytes, list[Entry]] = defaultdict(list)
    transfers: list[Op] = []
    for n, was in targets:
        srcs = leaving.get(n.digest or "")
        if srcs:
            uses[srcs[0]].append(n)
            continue
        st = staying.get(n.digest or "")
        if st is not None:
            transfers.append(RemoteCopy(n.path, n, st, was))
        else:
            transfers.append(Copy(n.path, n, was, _patch_chunks(was, n) if patch else None))
    finals: list[Op] = []
    for src, users in sorted(uses.items(), key=lambda kv: sort_key(kv[0])):
        cur = loc(src)
        if not cur.startswith(STASH + b"/"):
            ops.append(stash(src))
            cur = stash_of[src]
        for n in users[:-1]:
            transfers.append(RemoteCopy(n.path, n, cur, None))
        finals.append(Move(cur, users[-1].path, users[-1]))
        plan.file_moves += 1
    for k, op in enumerate(transfers):
        if isinstance(op, Copy):
            if op.patch is not None and (op.path in stash_of or loc(op.path) != op.path):
                op = transfers[k] = Copy(op.path, op.entry, op.old)  # its old content moves away
            plan.copy_bytes += patch_bytes(op.entry, op.patch) if op.patch is not None else op.entry.size
    if attic:
        # The old content of a file about to be replaced (by a copy, or by content
        # moved onto it), unless it moves on to another path itself (then it went
        # through the stash) or the file is patched in place.
        patched = {op.path for op in transfers if isinstance(op, Copy) and op.patch is not None}
        for o, n in updates:
            if o.path not in uses and o.path not in stash_of and n.path not in patched:
                ops.append(Retire(loc(o.path), o))
    ops.extend(transfers)
    ops.extend(finals)
    for n, was in later:
        key = n.link_key
        assert key is not None
        ops.append(Link(n.path, n, link_to[key], was))

    for p, e in sorted(added.items(), key=lambda kv: sort_key(kv[0])):
        if e.kind == SYMLINK:
            ops.append(Symlink(p, e))
    for o, n in changed:
        if n.kind == SYMLINK and not o.same_content(n):
            ops.append(Symlink(n.path, n))

    # Deletions: what leaves for good. Files first, then folders deepest first.
    # With the attic, a folder that leaves whole (the topmost such, holding a file
    # or link) moves there in one rename, with whatever is still below it.
    whole = _whole_folders(removed, uses, created, loc) if attic else {}
    rmdirs: list[bytes] = []
    for p, e in sorted(removed.items(), key=lambda kv: sort_key(kv[0])):
        if p in uses:
            continue
        top = _within_any(p, whole)
        if top == p:
            ops.append(Retire(p, e, tuple(whole[p])))
        elif top is None and e.kind == DIR:
            rmdirs.append(loc(p))
        elif top is None:
            ops.append(Retire(loc(p), e) if attic else Delete(loc(p), e))
        if e.kind == FILE:
            plan.deleted_files += 1
            if stale_before is not None and e.mtime_ns < stale_before:
                plan.stale_changes += 1
    ops.extend(Rmdir(p) for p in sorted(rmdirs, key=sort_key, reverse=True))

    # Attributes: files and links whose metadata alone changed; then every
    # folder that changed or had something change inside it, deepest first.
    for o, n in changed:
        if (n.kind != DIR and n.path not in written and o.same_content(n)
                and _attrs_differ(o, n, held)):
            ops.append(SetAttr(n.path, n))
    dirs: dict[bytes, Entry] = {p: e for p, e in added.items() if e.kind == DIR}
    dirs.update((n.path, n) for _, n in changed if n.kind == DIR)
    dirs.update(move_entries)
    touched = set(dirs)
    for op in ops:
        for p in op.paths:
            if not is_under(p, STASH):
                touched.add(parent(p))
    touched.discard(b"")
    lookup = touched - set(dirs)
    if lookup and diff.dirs is not None:
        dirs.update((p, diff.dirs[p]) for p in lookup if p in diff.dirs)
    elif lookup:
        dirs.update(_find_entries(open_new, lookup))
    for p in sorted(touched, key=sort_key, reverse=True):
        if p in dirs and dirs[p].kind == DIR:
            ops.append(SetAttr(p, dirs[p]))
    plan.ops = ops
    return plan


def _whole_folders(removed: dict[bytes, Entry], uses: dict[bytes, list[Entry]],
                   created: set[bytes], loc: Callable[[bytes], bytes]) -> dict[bytes, list[Entry]]:
    """The topmost removed folders at their own place (not stashed, nothing made
    there) that hold a file or link leaving with them: folder -> those entries
    (what moves on elsewhere went before, and is not one of them)."""
    tops: dict[bytes, list[Entry]] = {}
    for p, e in sorted(removed.items(), key=lambda kv: sort_key(kv[0])):
        if e.kind == DIR and _within_any(p, tops) is None and p not in created and loc(p) == p:
            tops[p] = []
    for p, e in removed.items():
        top = _within_any(p, tops)
        if top is not None and top != p and p not in uses and e.kind in (FILE, SYMLINK):
            tops[top].append(e)
    return {p: sorted(m, key=lambda e: sort_key(e.path)) for p, m in tops.items() if m}


def _within_any(p: bytes, tops: dict[bytes, list[Entry]]) -> bytes | None:
    """The folder of tops that is p or holds p."""
    if not tops:
        return None
    q = p
    while q:
        if q in tops:
            return q
        q = parent(q)
    return None


def _attrs_differ(o: Entry, n: Entry, held: tuple[bool, bool]) -> bool:
    """Does the remote entry need new attributes (of those it keeps) to become n?"""
    if o.mtime_ns != n.mtime_ns or (n.kind != SYMLINK and o.mode != n.mode):
        return True
    owners, xattrs = held
    if owners and o.uid is not None and (o.uid, o.gid) != (n.uid, n.gid):
        return True
    return xattrs and (o.xattrs or ()) != (n.xattrs or ())


def _patch_chunks(o: Entry | None, n: Entry) -> tuple[int, ...] | None:
    """The chunks of n that differ from o, if writing only those is worth it. (A
    remote file with other names is not patched: see Executor._patch.)"""
    if o is None or o.kind != FILE or not o.chunks or not n.chunks or o.path != n.path:
        return None
    idx = tuple(i for i, c in enumerate(n.chunks) if i >= len(o.chunks) or o.chunks[i] != c)
    if patch_bytes(n, idx) > n.size * PATCH_MAX_SHARE:
        return None
    return idx


def patch_bytes(n: Entry, idx: tuple[int, ...]) -> int:
    return sum(max(0, min(CHUNK_SIZE, n.size - i * CHUNK_SIZE)) for i in idx)


def _folder_moves(removed: dict[bytes, Entry], added: dict[bytes, Entry]) -> list[tuple[bytes, bytes]]:
    """Pick (old folder, new folder) renames by the votes of the files they share."""
    rdirs = {p for p, e in removed.items() if e.kind == DIR}
    adirs = {p for p, e in added.items() if e.kind == DIR}
    if not rdirs or not adirs:
        return []
    removed_by_digest: dict[str, list[bytes]] = defaultdict(list)
    for p, e in removed.items():
        if e.kind == FILE and e.digest:
            removed_by_digest[e.digest].append(p)
    votes: Counter[tuple[bytes, bytes]] = Counter()
    for p, e in added.items():
        if e.kind == FILE and e.digest in removed_by_digest:
            for src in removed_by_digest[e.digest][:4]:
                pair = _vote(src, p, rdirs, adirs)
                if pair is not None:
                    votes[pair] += 1
    moves: list[tuple[bytes, bytes]] = []
    for (x, y), _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0][0].count(b"/"), kv[0])):
        if any(is_under(x, s) or is_under(s, x) or _collides(y, s, d, removed)
               or _collides(d, x, y, removed) for s, d in moves):
            continue
        moves.append((x, y))
    return moves


def _is_dir(e: Entry | None) -> bool:
    return e is not None and e.kind == DIR


def _collides(y: bytes, s: bytes, d: bytes, removed: dict[bytes, Entry]) -> bool:
    """Would y be taken once folder s has become d? (Folder moves run outermost first,
    so a folder can move intact into a renamed one, just not onto what came with it.)"""
    return is_under(y, d) and s + y[len(d):] in removed


def _find_staying(
    open_old: Callable[[], Iterable[Entry]], digests: set[str], keys: set[tuple[int, int]],
    leaves: set[bytes],
) -> tuple[dict[str, bytes], dict[tuple[int, int], bytes]]:
    """Paths of files that stay where they are on the remote: holding these
    contents, and (hard links) these source inodes.

    One streaming pass over the old snapshot: every file there stays unless its
    path is in `leaves` (removed, replaced by another kind, or given new content).
    """
    found: dict[str, bytes] = {}
    linked: dict[tuple[int, int], bytes] = {}
    with_digests = getattr(open_old, "with_digests", None)
    # Without hard links to look for, only the entries naming a wanted digest
    # need decoding (a snapshot file's opener can pick them from the raw lines).
    olds = with_digests(digests) if with_digests is not None and not keys else open_old()
    for o in olds:
        if o.kind != FILE or o.path in leaves:
            continue
        if o.digest in digests and o.digest not in found:
            found[o.digest] = o.path
        if o.ino and (o.dev, o.ino) in keys and (o.dev, o.ino) not in linked:
            linked[(o.dev, o.ino)] = o.path
        if len(found) == len(digests) and len(linked) == len(keys):
            break
    return found, linked


def _find_entries(open_new: Callable[[], Iterable[Entry]], paths: set[bytes]) -> dict[bytes, Entry]:
    return {e.path: e for e in open_new() if e.path in paths}
