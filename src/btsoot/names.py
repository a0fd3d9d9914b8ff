"""Names a remote cannot hold, stored under a reversible encoded name.

Linux names are any bytes but `/` and NUL; a USB disk with exFAT, an SMB share
or a FAT stick rejects `" * : < > ? \\ |`, control characters, names that are
not UTF-8, or trailing dots and spaces. Such a name is stored with each byte
the remote cannot hold replaced by a character of Unicode's private use area,
U+F000 + the byte (`a:b` is stored as `a\\uF03Ab`): the mirror stays readable
(only the odd character shows as a box), and the mapping needs no table.

The encoding is reversible whatever the source's names are: a name that
already holds a character from U+F000 to U+F0FF has that character's own
UTF-8 bytes encoded the same way, so after encoding, every such character on
the remote stands for exactly one byte. Decoding replaces each by its byte.
A remote that holds every name (ext4, xfs, btrfs, sshfs to one of them) uses
no encoding at all: `Codec()` is the identity.

Which bytes a remote rejects is probed once and kept in its profile (see
`profile.py`); restore and verify read the profile from the remote, so a
restore on a fresh machine decodes what the backup encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

_BASE = 0xF000


def _code(b: int) -> bytes:
    return chr(_BASE + b).encode()


_CODES = [_code(b) for b in range(256)]


def _utf8_len(lead: int) -> int:
    if lead < 0xC2:
        return 0
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    if lead < 0xF5:
        return 4
    return 0


def _valid_at(name: bytes, i: int) -> int:
    """Length of the valid UTF-8 character starting at name[i] (a non-ASCII lead), or 0."""
    n = _utf8_len(name[i])
    if not n or i + n > len(name):
        return 0
    try:
        name[i:i + n].decode("utf-8")
    except UnicodeDecodeError:
        return 0
    return n


@dataclass(frozen=True, slots=True)
class Codec:
    forbidden: frozenset[int] = frozenset()  # ASCII bytes the remote rejects in a name
    utf8_only: bool = False  # the remote rejects names that are not UTF-8
    no_trailing: frozenset[int] = frozenset()  # bytes a name may not end with (`.`, ` `)

    @property
    def active(self) -> bool:
        return bool(self.forbidden or self.utf8_only or self.no_trailing)

    def encode(self, name: bytes) -> bytes:
        """The name to store on the remote for the source's name."""
        if not self.active:
            return name
        if name.isascii() and not any(b in self.forbidden for b in name) and not (
                name and name[-1] in self.no_trailing):
            return name
        out = bytearray()
        i, n = 0, len(name)
        while i < n:
            b = name[i]
            if b < 0x80:
                out += _CODES[b] if b in self.forbidden else bytes((b,))
                i += 1
                continue
            k = _valid_at(name, i)
            if k:
                ch = name[i:i + k]
                if k == 3 and _BASE <= ord(ch.decode("utf-8")) <= _BASE + 0xFF:
                    out += b"".join(_CODES[x] for x in ch)  # our own marker: escaped
                else:
                    out += ch
                i += k
            else:
                out += _CODES[b] if self.utf8_only else bytes((b,))
                i += 1
        if out and out[-1] in self.no_trailing:
            out[-1:] = _CODES[out[-1]]
        return bytes(out)

    def escape(self, name: bytes) -> bytes:
        """The name to store for the second of two case twins: every letter and every
        byte of a non-ASCII character escaped as well, so that no case folding can
        take it for another name (it decodes like any encoded name)."""
        out = bytearray()
        last = len(name) - 1
        for i, b in enumerate(name):
            if (b >= 0x80 or chr(b).isalpha() or b in self.forbidden
                    or (i == last and b in self.no_trailing)):
                out += _CODES[b]
            else:
                out.append(b)
        return bytes(out)


def decode(stored: bytes) -> bytes:
    """The source's name for a name found on the remote (any codec's)."""
    if b"\xef" not in stored:
        return stored
    out = bytearray()
    i, n = 0, len(stored)
    while i < n:
        b = stored[i]
        if b == 0xEF and _valid_at(stored, i) == 3:
            c = ord(stored[i:i + 3].decode("utf-8"))
            if _BASE <= c <= _BASE + 0xFF:
                out.append(c - _BASE)
                i += 3
                continue
        out.append(b)
        i += 1
    return bytes(out)


def fold(path: bytes) -> bytes:
    """path as a case-folding remote (exFAT, NTFS, SMB) compares it: each character
    upper-cased where its upper case is one character (their upcase tables map
    characters one to one; `ß` stays)."""
    text = path.decode("utf-8", "surrogateescape")
    out = "".join(u if len(u := c.upper()) == 1 else c for c in text)
    return out.encode("utf-8", "surrogateescape")
