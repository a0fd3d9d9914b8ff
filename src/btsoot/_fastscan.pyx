# cython: language_level=3
"""Compiled scanner core: walk a tree, read and hash files, GIL released.

Same API and same results as the pure-Python twin `_pyscan` (the test oracle).

walk() -- the order and its invariants
    Depth-first pre-order; the children of each directory are sorted by their
    name bytes (strcmp compares as unsigned char, which is Python's bytes
    order). Every directory is therefore followed directly by its whole
    subtree: the snapshot order, where paths compare by components as if b"/"
    sorted before every other byte.

    A directory is read in one go in C with the GIL released (a "listing"):
    readdir() collects the names into one arena, qsort() orders them, then
    each name is lstat'ed with fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW) and
    symlink targets are read with readlinkat(). Going relative to the open
    directory saves resolving the whole path again for every entry, and means
    a renamed parent cannot send the walk elsewhere. Python objects (the
    relative path, the result tuple) are made only when an entry is handed
    out, one per __next__ call; the exclude callback runs at that point, so an
    excluded directory is never opened.

    The walker keeps a stack of listings, one per directory level being
    walked. Each keeps its directory fd open so subdirectories are opened
    with openat(O_NOFOLLOW | O_DIRECTORY); below _MAX_OPEN_DEPTH levels a
    listing closes its fd once read and its children are opened name by name
    from the deepest level still open, so a pathological depth can neither
    exhaust file descriptors nor build a path longer than PATH_MAX.

    Errors are values: an entry that cannot be lstat'ed (vanished, EACCES) or
    whose link cannot be read is yielded as ERROR with its errno; a directory
    that cannot be opened or listed is yielded as DIR, then as ERROR, and the
    walk goes on. Only a missing root raises (OSError), as in the twin.
    A root that is a symlink to a directory is followed; nothing below it is.

hash_file()
    open(O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK) so a FIFO swapped in cannot
    block us, fstat, refuse anything not a regular file, then read into one
    malloc'd buffer (1 MiB, or size + 1 for a smaller file) with the GIL
    released, and feed it, wrapped in a memoryview rather than copied, to the
    `xxhash` package's XXH3-128 (its update() releases the GIL itself for
    buffers over 64 KiB). Reads never cross a chunk boundary, so per-chunk
    digests need no bookkeeping across reads.

    Most files are small, and there the cost is the system calls, not the
    hashing: a file that fits the buffer is opened, fstat'ed, read, fstat'ed
    again and closed in one GIL-free section, then hashed with the one-shot
    function. Handing the GIL back and forth costs more than the syscalls
    when several threads hash at once, so each extra release shows.

    The size and mtime from fstat before and after reading, and the number of
    bytes read, must all agree; otherwise the result is CHANGED. A short read
    that reaches exactly the fstat size counts as end of file (the second
    fstat still catches growth). Reading stops as soon as more bytes than the
    first fstat reported have arrived, so a file that keeps growing cannot
    hold a worker forever.

Both functions are safe to call from many threads at once; one walk()
iterator is not (like a generator, it refuses to be re-entered).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.buffer cimport PyBUF_READ
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc cimport errno as c_errno
from libc.errno cimport EINTR, EINVAL, EISDIR, ENOMEM, EPERM, errno
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memchr, memcmp, memcpy, strcmp, strlen
from posix.fcntl cimport (AT_SYMLINK_NOFOLLOW, F_SETFL, O_CLOEXEC, O_CREAT, O_DIRECTORY, O_NONBLOCK,
                          O_RDONLY, O_TRUNC, O_WRONLY, POSIX_FADV_SEQUENTIAL, fcntl, open, openat,
                          posix_fadvise)
from posix.stat cimport S_ISDIR, S_ISLNK, S_ISREG, fchmod, fstat, fstatat, futimens, stat, struct_stat
from posix.time cimport timespec
from posix.unistd cimport close, fsync, read, write

import os

import xxhash

from . import _kinds

_xxh3_128_hexdigest = xxhash.xxh3_128_hexdigest

cdef extern from "<fcntl.h>" nogil:
    enum: O_NOFOLLOW

cdef extern from "<unistd.h>" nogil:
    Py_ssize_t readlinkat(int dirfd, const char* path, char* buf, size_t size)
    int unlinkat(int dirfd, const char* path, int flags)

cdef extern from "<stdio.h>" nogil:
    int renameat(int olddirfd, const char* oldpath, int newdirfd, const char* newpath)

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass
    struct dirent:
        char d_name[256]
    DIR* fdopendir(int fd)
    dirent* readdir(DIR* d)
    int closedir(DIR* d)

IMPLEMENTATION = "compiled"

# Entry kinds, as plain C values; checked against _kinds at import below.
cdef enum:
    K_FILE = 1
    K_DIR = 2
    K_SYMLINK = 3
    K_SPECIAL = 4
    K_ERROR = 5
    K_CHANGED = -1

if (_kinds.FILE, _kinds.DIR, _kinds.SYMLINK, _kinds.SPECIAL, _kinds.ERROR, _kinds.CHANGED) != (
    K_FILE, K_DIR, K_SYMLINK, K_SPECIAL, K_ERROR, K_CHANGED
):
    raise ImportError("btsoot._fastscan is out of step with btsoot._kinds; rebuild it")

cdef enum:
    _BUFSIZE = 1 << 20
    _MAX_OPEN_DEPTH = 128
    _DIR_FLAGS = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC


# --------------------------------------------------------------------------
# Directory listings (pure C, no GIL)

cdef struct Entry:
    char* name          # NUL-terminated, points into the listing's arena
    size_t namelen
    int stat_err        # errno of fstatat, 0 if the fields below are valid
    int link_err        # errno of readlinkat (symlinks only)
    unsigned int mode
    long long size
    long long mtime_ns
    unsigned long long ino
    unsigned long long dev
    unsigned int uid
    unsigned int gid
    long long ctime_ns
    unsigned long long nlink
    char* target        # malloc'd link target, symlinks only
    size_t targetlen

cdef struct Listing:
    DIR* dir            # open while the level is walked, NULL once closed
    int fd              # dirfd(dir), or -1 when closed
    Entry* entries
    size_t count
    size_t pos          # next entry to hand out
    char* arena


cdef int _cmp_entries(const void* a, const void* b) noexcept nogil:
    return strcmp((<const Entry*>a).name, (<const Entry*>b).name)


cdef void _free_listing(Listing* l) noexcept nogil:
    cdef size_t i
    if l.entries != NULL:
        for i in range(l.count):
            free(l.entries[i].target)
        free(l.entries)
    free(l.arena)
    if l.dir != NULL:
        closedir(l.dir)
    l.dir = NULL
    l.fd = -1
    l.entries = NULL
    l.arena = NULL
    l.count = 0
    l.pos = 0


cdef inline long long _mtime_ns(const struct_stat* st) noexcept nogil:
    return <long long>st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec


cdef void _read_link(int fd, Entry* e) noexcept nogil:
    # st_size is the target length on most filesystems, 0 on some (procfs).
    cdef size_t cap = <size_t>e.size + 1 if e.size > 0 else 256
    cdef char* buf = NULL
    cdef char* grown
    cdef Py_ssize_t n
    while True:
        grown = <char*>realloc(buf, cap)
        if grown == NULL:
            free(buf)
            e.link_err = ENOMEM
            return
        buf = grown
        n = readlinkat(fd, e.name, buf, cap)
        if n < 0:
            e.link_err = errno
            free(buf)
            return
        if <size_t>n < cap:
            e.target = buf
            e.targetlen = <size_t>n
            return
        cap *= 2


cdef void _stat_entry(int fd, Entry* e) noexcept nogil:
    cdef struct_stat st
    if fstatat(fd, e.name, &st, AT_SYMLINK_NOFOLLOW) != 0:
        e.stat_err = errno
        return
    e.mode = st.st_mode
    e.size = st.st_size
    e.mtime_ns = _mtime_ns(&st)
    e.ino = st.st_ino
    e.dev = st.st_dev
    e.uid = st.st_uid
    e.gid = st.st_gid
    e.ctime_ns = <long long>st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec
    e.nlink = st.st_nlink
    if S_ISLNK(st.st_mode):
        _read_link(fd, e)


cdef int _read_listing(int fd, Listing* l, bint keep_open) noexcept nogil:
    """Take ownership of directory fd; fill l with its sorted, lstat'ed entries.

    Returns 0, or an errno with l left empty and fd closed.
    """
    cdef dirent* d
    cdef const char* name
    cdef size_t n, i
    cdef size_t used = 0, arena_cap = 4096, entries_cap = 64
    cdef void* grown
    cdef int err = 0
    l.dir = NULL
    l.fd = -1
    l.count = 0
    l.pos = 0
    l.arena = NULL
    l.entries = NULL
    l.dir = fdopendir(fd)
    if l.dir == NULL:
        err = errno
        close(fd)
        return err
    l.fd = fd
    l.arena = <char*>malloc(arena_cap)
    l.entries = <Entry*>malloc(entries_cap * sizeof(Entry))
    if l.arena == NULL or l.entries == NULL:
        _free_listing(l)
        return ENOMEM
    while True:
        c_errno.errno = 0  # readdir() signals an error only through errno
        d = readdir(l.dir)
        if d == NULL:
            err = errno
            break
        name = d.d_name
        if name[0] == b'.' and (name[1] == 0 or (name[1] == b'.' and name[2] == 0)):
            continue
        n = strlen(name)
        if used + n + 1 > arena_cap:
            while used + n + 1 > arena_cap:
                arena_cap *= 2
            grown = realloc(l.arena, arena_cap)
            if grown == NULL:
                err = ENOMEM
                break
            l.arena = <char*>grown
        if l.count == entries_cap:
            entries_cap *= 2
            grown = realloc(l.entries, entries_cap * sizeof(Entry))
            if grown == NULL:
                err = ENOMEM
                break
            l.entries = <Entry*>grown
        memcpy(l.arena + used, name, n + 1)
        # The arena may still move: keep the offset, make it a pointer below.
        l.entries[l.count].name = <char*>used
        l.entries[l.count].namelen = n
        l.entries[l.count].stat_err = 0
        l.entries[l.count].link_err = 0
        l.entries[l.count].target = NULL
        l.entries[l.count].targetlen = 0
        l.count += 1
        used += n + 1
    if err != 0:
        l.count = 0  # no target was allocated yet
        _free_listing(l)
        return err
    for i in range(l.count):
        l.entries[i].name = l.arena + <size_t>l.entries[i].name
    qsort(l.entries, l.count, sizeof(Entry), _cmp_entries)
    for i in range(l.count):
        _stat_entry(fd, &l.entries[i])
    if not keep_open:
        closedir(l.dir)
        l.dir = NULL
        l.fd = -1
    return 0


# --------------------------------------------------------------------------
# walk()

cdef inline bytes _join(bytes prefix, const char* name, size_t n):
    cdef Py_ssize_t plen = len(prefix)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, plen + <Py_ssize_t>n)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(prefix), plen)
    memcpy(p + plen, name, n)
    return out


cdef inline tuple _error(bytes rel, int err):
    return (rel, K_ERROR, 0, 0, 0, 0, 0, err, 0, 0, 0, 0)


cdef bytes _as_path(object path):
    cdef bytes b = os.fsencode(path)
    if memchr(PyBytes_AS_STRING(b), 0, len(b)) != NULL:
        raise ValueError("embedded null byte")
    return b


cdef class _Walk:
    """Iterator returned by walk(); see the module docstring for the order."""

    cdef bytes root
    cdef object exclude
    cdef bint one_file_system
    cdef bint started
    cdef unsigned long long root_dev
    cdef Listing* levels
    cdef Py_ssize_t depth          # number of live levels
    cdef Py_ssize_t capacity
    cdef list prefixes             # prefixes[i]: relative path of level i plus b"/"
    cdef object pending            # an ERROR tuple due right after its DIR
    cdef bint busy                 # inside __next__: refuse re-entry

    def __cinit__(self, bytes root, bint one_file_system, object exclude):
        self.root = root
        self.one_file_system = one_file_system
        self.exclude = exclude
        self.levels = NULL
        self.depth = 0
        self.capacity = 0
        self.prefixes = []
        self.pending = None

    def __dealloc__(self):
        while self.depth > 0:
            self.depth -= 1
            _free_listing(&self.levels[self.depth])
        free(self.levels)

    def __iter__(self):
        return self

    cdef int _push(self, int fd, bytes prefix) except -1:
        """Read directory fd (owned) as a new level; return 0 or an errno."""
        cdef void* grown
        cdef Listing* l
        cdef int err
        cdef bint keep_open = self.depth < _MAX_OPEN_DEPTH
        if self.depth == self.capacity:
            grown = realloc(self.levels, (self.capacity * 2 + 8) * sizeof(Listing))
            if grown == NULL:
                with nogil:
                    close(fd)
                return ENOMEM
            self.levels = <Listing*>grown
            self.capacity = self.capacity * 2 + 8
        l = &self.levels[self.depth]
        with nogil:
            err = _read_listing(fd, l, keep_open)
        if err == 0:
            self.prefixes.append(prefix)
            self.depth += 1
        return err

    cdef int _open_child(self, bytes rel, const char* name) except? -1:
        """Open subdirectory name of the top level; return its fd or -errno."""
        cdef int parent = self.levels[self.depth - 1].fd
        cdef int fd
        if parent >= 0:
            with nogil:
                fd = openat(parent, name, _DIR_FLAGS)
                if fd < 0:
                    fd = -errno
        else:
            fd = self._open_deep(rel)
        return fd

    cdef int _open_deep(self, bytes rel) except? -1:
        """Open folder rel below _MAX_OPEN_DEPTH: one openat per name from the
        deepest level still open, so no path handed to the kernel grows with the
        depth (a full path would fail with ENAMETOOLONG past PATH_MAX)."""
        cdef Py_ssize_t k = self.depth - 1
        cdef int cur, nxt, fd
        cdef const char* name
        cdef const char* path = self.root
        cdef bytes part, rest
        while k >= 0 and self.levels[k].fd < 0:
            k -= 1
        cur = self.levels[k].fd if k >= 0 else -1
        rest = rel[len(<bytes>self.prefixes[k]):] if k >= 0 else rel
        if cur < 0:  # nothing open (cannot happen below the root): start from the root
            with nogil:
                cur = open(path, _DIR_FLAGS)
                if cur < 0:
                    return -errno
            nxt = cur
        else:
            nxt = -1
        for part in rest.split(b"/"):
            name = part
            with nogil:
                fd = openat(cur, name, _DIR_FLAGS)
                if fd < 0:
                    fd = -errno
                if nxt >= 0:
                    close(nxt)  # an intermediate folder of ours, not a level's
            if fd < 0:
                return fd
            cur = nxt = fd
        return cur

    cdef _start(self):
        cdef struct_stat st
        cdef const char* path = self.root
        cdef int fd, err
        self.started = True
        with nogil:
            # stat, not lstat: a root that is a symlink is listed through, so
            # one_file_system compares against the device actually walked.
            err = errno if stat(path, &st) != 0 else 0
        if err != 0:
            raise OSError(err, os.strerror(err), self.root)
        self.root_dev = st.st_dev
        with nogil:
            fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            err = errno if fd < 0 else 0
        if fd >= 0:
            err = self._push(fd, b"")
        if err != 0:
            self.pending = _error(b"", err)

    def __next__(self):
        if self.busy:
            raise ValueError("walk() iterator already executing")
        self.busy = True
        try:
            entry = self._next()
        finally:
            self.busy = False
        if entry is None:
            raise StopIteration
        return entry

    cdef tuple _next(self):
        """The next entry, or None at the end."""
        cdef Listing* top
        cdef Entry* e
        cdef bytes rel
        cdef bint is_dir
        cdef int fd, err
        cdef tuple t
        if not self.started:
            self._start()
        while True:
            if self.pending is not None:
                t = self.pending
                self.pending = None
                return t
            if self.depth == 0:
                return None
            top = &self.levels[self.depth - 1]
            if top.pos == top.count:
                self.depth -= 1
                _free_listing(top)
                self.prefixes.pop()
                continue
            e = &top.entries[top.pos]
            top.pos += 1
            rel = _join(<bytes>self.prefixes[self.depth - 1], e.name, e.namelen)
            if e.stat_err != 0:
                return _error(rel, e.stat_err)
            is_dir = S_ISDIR(e.mode)
            if self.exclude is not None and self.exclude(rel, is_dir):
                continue
            if S_ISREG(e.mode):
                return (rel, K_FILE, e.size, e.mtime_ns, e.mode, e.ino, e.dev, None,
                        e.uid, e.gid, e.ctime_ns, e.nlink)
            if is_dir:
                t = (rel, K_DIR, 0, e.mtime_ns, e.mode, e.ino, e.dev, None,
                     e.uid, e.gid, e.ctime_ns, e.nlink)
                if self.one_file_system and e.dev != self.root_dev:
                    return t
                # Pre-order: list the children now, hand them out next. `e` and
                # `top` may move when the level stack grows: not used below.
                fd = self._open_child(rel, e.name)
                if fd < 0:
                    err = -fd
                else:
                    err = self._push(fd, rel + b"/")
                if err != 0:
                    self.pending = _error(rel, err)
                return t
            if S_ISLNK(e.mode):
                if e.link_err != 0:
                    return _error(rel, e.link_err)
                return (rel, K_SYMLINK, e.size, e.mtime_ns, e.mode, e.ino, e.dev,
                        PyBytes_FromStringAndSize(e.target, e.targetlen),
                        e.uid, e.gid, e.ctime_ns, e.nlink)
            return (rel, K_SPECIAL, 0, e.mtime_ns, e.mode, e.ino, e.dev, None,
                    e.uid, e.gid, e.ctime_ns, e.nlink)


def walk(root, one_file_system=True, exclude=None):
    """Yield (path, kind, size, mtime_ns, mode, ino, dev, extra, uid, gid, ctime_ns, nlink)
    for every entry below root."""
    if not isinstance(root, bytes):
        raise TypeError(f"root must be bytes, not {type(root).__name__}")
    return _Walk(_as_path(root), bool(one_file_system), exclude)


# --------------------------------------------------------------------------
# hash_file()

cdef struct Reader:
    int fd
    int err             # 0 or the errno that ended reading
    bint eof            # end of file reached; `after` is valid and fd closed
    char* buf
    size_t bufsize
    size_t got          # bytes in buf after the last fill
    long long total     # bytes read so far
    struct_stat before
    struct_stat after


cdef inline void _reader_init(Reader* r) noexcept nogil:
    r.fd = -1
    r.err = 0
    r.eof = False
    r.buf = NULL
    r.bufsize = 0
    r.got = 0
    r.total = 0


cdef void _reader_open(Reader* r, const char* path) noexcept nogil:
    cdef long long size
    r.fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    if r.fd < 0:
        r.err = errno
        return
    if fstat(r.fd, &r.before) != 0:
        r.err = errno
        return
    if not S_ISREG(r.before.st_mode):
        # Never read a FIFO or device: it may block or never end.
        r.err = EISDIR if S_ISDIR(r.before.st_mode) else EINVAL
        return
    # O_NONBLOCK was only for the open; some FUSE filesystems honour it on reads.
    if fcntl(r.fd, F_SETFL, 0) != 0:
        r.err = errno
        return
    size = r.before.st_size
    if size >= _BUFSIZE:
        posix_fadvise(r.fd, 0, 0, POSIX_FADV_SEQUENTIAL)
        r.bufsize = _BUFSIZE
    else:
        # One spare byte so a small file is read, and its EOF seen, in one pass.
        r.bufsize = <size_t>size + 1
    r.buf = <char*>malloc(r.bufsize)
    if r.buf == NULL:
        r.err = ENOMEM


cdef void _reader_fill(Reader* r, size_t want) noexcept nogil:
    """Read up to want bytes into buf; at EOF also fstat and close.

    A short read that brings the total to exactly the size fstat reported is
    taken as EOF without another read() returning 0: the fstat that follows
    catches any growth since, as a last read would have.
    """
    cdef Py_ssize_t n
    cdef bint at_eof = False
    r.got = 0
    while r.got < want:
        n = read(r.fd, r.buf + r.got, want - r.got)
        if n < 0:
            if errno == EINTR:
                continue
            r.err = errno
            return
        if n == 0:
            at_eof = True
            break
        r.got += <size_t>n
        r.total += n
        if r.got < want and r.total == r.before.st_size:
            at_eof = True
            break
    if at_eof:
        r.eof = True
        if fstat(r.fd, &r.after) != 0:
            r.err = errno
        close(r.fd)
        r.fd = -1


cdef inline bint _same_stat(const struct_stat* a, const struct_stat* b) noexcept nogil:
    return (a.st_size == b.st_size and a.st_mtim.tv_sec == b.st_mtim.tv_sec
            and a.st_mtim.tv_nsec == b.st_mtim.tv_nsec)


def hash_file(path, Py_ssize_t chunk_size, Py_ssize_t chunk_threshold):
    """Hash one file: (digest, chunks, size, mtime_ns, ino, err)."""
    cdef bytes bpath = _as_path(path)
    cdef const char* cpath = bpath
    cdef Reader r
    cdef bint chunked = False
    cdef size_t want
    cdef long long size, in_part = 0
    cdef object whole, part = None, view
    cdef list chunks = None
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    _reader_init(&r)
    try:
        with nogil:
            _reader_open(&r, cpath)
            if r.err == 0:
                chunked = r.before.st_size >= chunk_threshold
                want = r.bufsize
                if chunked and <size_t>chunk_size < want:
                    want = <size_t>chunk_size
                _reader_fill(&r, want)
        if r.err != 0:
            return (None, None, 0, 0, 0, r.err)
        size = r.before.st_size
        if r.eof and not chunked:
            # The common case, a small file read whole in one pass: one-shot digest.
            if r.total != size or not _same_stat(&r.before, &r.after):
                return (None, None, size, _mtime_ns(&r.before), r.before.st_ino, K_CHANGED)
            view = PyMemoryView_FromMemory(r.buf, <Py_ssize_t>r.got, PyBUF_READ)
            return (_xxh3_128_hexdigest(view), None, size, _mtime_ns(&r.before),
                    r.before.st_ino, 0)
        whole = xxhash.xxh3_128()
        if chunked:
            chunks = []
            part = xxhash.xxh3_128()
        while True:
            if r.got:
                view = PyMemoryView_FromMemory(r.buf, <Py_ssize_t>r.got, PyBUF_READ)
                whole.update(view)
                if chunked:
                    part.update(view)
                    in_part += <long long>r.got
                    if in_part == chunk_size:
                        chunks.append(part.hexdigest())
                        part.reset()
                        in_part = 0
                view = None
            if r.eof or r.total > size:
                break
            want = r.bufsize
            if chunked and <size_t>(chunk_size - in_part) < want:
                want = <size_t>(chunk_size - in_part)
            with nogil:
                _reader_fill(&r, want)
            if r.err != 0:
                return (None, None, 0, 0, 0, r.err)
    finally:
        view = None  # never outlive the buffer it points into
        if r.fd >= 0:
            with nogil:
                close(r.fd)
            r.fd = -1
        free(r.buf)
        r.buf = NULL
    if not r.eof or r.total != size or not _same_stat(&r.before, &r.after):
        return (None, None, size, _mtime_ns(&r.before), r.before.st_ino, K_CHANGED)
    if chunked and in_part:
        chunks.append(part.hexdigest())
    return (whole.hexdigest(), chunks, size, _mtime_ns(&r.before), r.before.st_ino, 0)


# --------------------------------------------------------------------------
# Snapshot lines: the no-change fast path
#
# The snapshot writer (orjson) puts an entry's fields in one fixed order, so a
# line that still describes exactly what the walk found can be recognised by
# comparing bytes, without decoding it. Anything not in that canonical shape
# (escaped or base64 paths, symlinks, damage) answers None/False and the
# caller decodes the line the slow way.

cdef const char* _PATH_PREFIX = b'{"path":"'
cdef enum:
    _PATH_PREFIX_LEN = 9


cdef inline bint _hex32(const char* s, Py_ssize_t n) noexcept nogil:
    """32 lowercase hex digits and a closing quote."""
    cdef Py_ssize_t i
    cdef char c
    if n < 33 or s[32] != b'"':
        return False
    for i in range(32):
        c = s[i]
        if not ((b'0' <= c <= b'9') or (b'a' <= c <= b'f')):
            return False
    return True


cdef bint _digest_tail(const char* s, Py_ssize_t n) noexcept nogil:
    """The rest of a file line after '"digest":"': the digest, then either the
    end, or the chunk digests and the end. Only the writer's exact shape passes,
    so a line written back unread has been checked as fully as a decoded one."""
    cdef Py_ssize_t i
    if not _hex32(s, n):
        return False
    s += 33
    n -= 33
    if n == 2:
        return s[0] == b'}' and s[1] == b'\n'
    if n < 12 + 33 + 3 or memcmp(s, b',"chunks":["', 12) != 0:
        return False
    s += 12
    n -= 12
    while True:
        if not _hex32(s, n):
            return False
        s += 33
        n -= 33
        if n == 3:
            return s[0] == b']' and s[1] == b'}' and s[2] == b'\n'
        if n < 2 + 33 + 3 or s[0] != b',' or s[1] != b'"':
            return False
        s += 2
        n -= 2


def line_path(bytes line):
    """The path of an entry line in the writer's canonical form, else None."""
    cdef const char* s = PyBytes_AS_STRING(line)
    cdef Py_ssize_t n = len(line), i
    cdef char c
    if n < _PATH_PREFIX_LEN or memcmp(s, _PATH_PREFIX, _PATH_PREFIX_LEN) != 0:
        return None
    i = _PATH_PREFIX_LEN
    while i < n:
        c = s[i]
        if c == b'"':
            return PyBytes_FromStringAndSize(s + _PATH_PREFIX_LEN, i - _PATH_PREFIX_LEN)
        if c == b'\\':
            return None
        i += 1
    return None


# Building the expected bytes by hand: snprintf's format parsing cost more than
# the rest of the no-change fast path together (nine numbers per line).

cdef inline char* _put(char* p, const char* s) noexcept nogil:
    cdef size_t n = strlen(s)
    memcpy(p, s, n)
    return p + n


cdef inline char* _put_u(char* p, unsigned long long v) noexcept nogil:
    cdef char tmp[24]
    cdef int i = 0
    while True:
        tmp[i] = <char>(48 + v % 10)
        v //= 10
        i += 1
        if v == 0:
            break
    while i:
        i -= 1
        p[0] = tmp[i]
        p += 1
    return p


cdef inline char* _put_i(char* p, long long v) noexcept nogil:
    if v < 0:
        p[0] = b'-'
        return _put_u(p + 1, <unsigned long long>(-(v + 1)) + 1)
    return _put_u(p, <unsigned long long>v)


def line_same(bytes line, tuple w, long long racy_before, long long ctime_before, bint links):
    """Is `line` (whose path the caller has matched to w's) the canonical record
    of walk tuple w, field for field? Files must also carry a digest and have
    an mtime before racy_before; files and folders a ctime before ctime_before
    (else their extended attributes are read again). links: a file's link count
    is recorded when above one. Only files and folders can answer True."""
    cdef const char* s = PyBytes_AS_STRING(line)
    cdef Py_ssize_t n = len(line)
    cdef Py_ssize_t off = _PATH_PREFIX_LEN + len(<bytes>w[0])
    cdef int kind = w[1]
    cdef long long mtime = w[3]
    cdef long long ctime = w[10]
    cdef unsigned long long nlink = w[11]
    cdef char buf[400]
    cdef char* p = buf
    cdef Py_ssize_t k
    if ctime >= ctime_before:
        return False
    if kind == K_FILE:
        if mtime >= racy_before:
            return False
        p = _put(p, b'","type":"file","size":')
        p = _put_i(p, <long long>w[2])
    elif kind == K_DIR:
        p = _put(p, b'","type":"dir"')
    else:
        return False
    p = _put(p, b',"mtime":')
    p = _put_i(p, mtime)
    p = _put(p, b',"ctime":')
    p = _put_i(p, ctime)
    p = _put(p, b',"mode":')
    p = _put_i(p, <long long>w[4])
    p = _put(p, b',"uid":')
    p = _put_u(p, <unsigned long long>w[8])
    p = _put(p, b',"gid":')
    p = _put_u(p, <unsigned long long>w[9])
    p = _put(p, b',"ino":')
    p = _put_u(p, <unsigned long long>w[5])
    p = _put(p, b',"dev":')
    p = _put_u(p, <unsigned long long>w[6])
    if kind == K_DIR:
        p = _put(p, b'}\n')
        k = p - buf
        return off + k == n and memcmp(s + off, buf, k) == 0
    if links and nlink > 1:
        p = _put(p, b',"nlink":')
        p = _put_u(p, nlink)
    p = _put(p, b',"digest":"')
    k = p - buf
    return (off + k <= n and memcmp(s + off, buf, k) == 0
            and _digest_tail(s + off + k, n - off - k))


# --------------------------------------------------------------------------
# Small-file copies: the first backup's bulk
#
# A copy done with Python's os calls hands the GIL back and forth a dozen
# times per file (open, fstat, read, write, fchmod, close, utime, rename...),
# and with several transfer threads that convoy costs more than the copying
# (tens of futex calls per file). Here the whole read is one GIL-free section
# and the whole write another; only the hash in between holds the GIL.

SMALL_COPY_MAX = _BUFSIZE


cdef int _write_out(int dfd, const char* tmp, const char* final, const char* buf, size_t n,
                    int mode, long long mtime_ns, bint sync) noexcept nogil:
    """Write buf to tmp (new), set mode and mtime, rename onto final, both names
    relative to the folder descriptor dfd; 0 or errno. With sync, tmp is fsynced
    before the rename (where a sync of the whole file system does not reach the
    far end: sshfs)."""
    cdef int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
    cdef Py_ssize_t w
    cdef size_t done = 0
    cdef int err = 0
    cdef timespec times[2]
    if fd < 0:
        return errno
    while done < n:
        w = write(fd, buf + done, n - done)
        if w < 0:
            if errno == EINTR:
                continue
            err = errno
            break
        done += <size_t>w
    if err == 0 and fchmod(fd, mode & 0o7777) != 0:
        err = errno
        # A remote that refuses set-id bits (exFAT): the rest of the mode, the
        # snapshot keeps them all.
        if err == EPERM and mode & 0o6000 and fchmod(fd, mode & 0o1777) == 0:
            err = 0
    if err == 0:
        times[0].tv_sec = mtime_ns // 1000000000
        times[0].tv_nsec = mtime_ns % 1000000000
        if times[0].tv_nsec < 0:
            times[0].tv_sec -= 1
            times[0].tv_nsec += 1000000000
        times[1] = times[0]
        if futimens(fd, times) != 0:
            err = errno
    if err == 0 and sync and fsync(fd) != 0:
        err = errno
    if close(fd) != 0 and err == 0:
        err = errno
    if err == 0 and renameat(dfd, tmp, dfd, final) != 0:
        err = errno
    if err != 0:
        unlinkat(dfd, tmp, 0)
    return err


def copy_small(src, int dir_fd, tmp, final, long long size, long long mtime_ns, int mode,
               expect_digest, bint sync=False):
    """Copy a file smaller than SMALL_COPY_MAX: (digest, err, side).

    The source must have `size` and `mtime_ns` before and after it is read, and
    hash to expect_digest when that is given; else err is CHANGED and nothing
    is written. Then the bytes go to tmp (created, mode 0600, never through a
    link), get `mode` and `mtime_ns`, and tmp is renamed onto final; tmp and
    final are names in the folder dir_fd (or paths, with AT_FDCWD, as `os`
    spells it: -100); with sync, tmp is fsynced before the rename. err is 0,
    CHANGED, or an errno;
    side says where an errno came from: 0 the source, 1 the remote (tmp is
    removed then).
    """
    cdef bytes bsrc = _as_path(src), btmp = _as_path(tmp), bfinal = _as_path(final)
    cdef const char* csrc = bsrc
    cdef const char* ctmp = btmp
    cdef const char* cfinal = bfinal
    cdef Reader r
    cdef int err
    cdef object digest
    if size >= SMALL_COPY_MAX:
        raise ValueError("copy_small: file too large")
    _reader_init(&r)
    try:
        with nogil:
            _reader_open(&r, csrc)
            if r.err == 0 and (r.before.st_size != size or _mtime_ns(&r.before) != mtime_ns):
                r.err = K_CHANGED
            if r.err == 0:
                _reader_fill(&r, r.bufsize)
                if r.err == 0 and (not r.eof or r.total != size
                                   or not _same_stat(&r.before, &r.after)):
                    r.err = K_CHANGED
        if r.err != 0:
            return (None, r.err, 0)
        digest = _xxh3_128_hexdigest(PyMemoryView_FromMemory(r.buf, <Py_ssize_t>r.got, PyBUF_READ))
        if expect_digest is not None and digest != expect_digest:
            return (None, K_CHANGED, 0)
        with nogil:
            err = _write_out(dir_fd, ctmp, cfinal, r.buf, r.got, mode, mtime_ns, sync)
        if err != 0:
            return (None, err, 1)
        return (digest, 0, 0)
    finally:
        if r.fd >= 0:
            close(r.fd)
        free(r.buf)
