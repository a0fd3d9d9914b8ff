"""The name encoding for remotes that refuse some names: reversible for any name."""

from __future__ import annotations

import random

import pytest

from btsoot.names import Codec, decode, fold

EXFAT = Codec(frozenset(b'"*:<>?\\|' + bytes(range(1, 32))), True, frozenset())
SMB = Codec(frozenset(b'"*:<>?\\|'), False, frozenset(b". "))
STRICT = Codec(frozenset(b'"*:<>?\\|' + bytes(range(1, 32)) + b"\x7f"), True, frozenset(b". "))


@pytest.mark.parametrize("name,stored", [
    (b"a:b", "a\uf03ab".encode()),
    (b"x\xff", "x\uf0ff".encode()),
    (b"caf\xc3\xa9", b"caf\xc3\xa9"),  # valid UTF-8 stays
    ("\uf03a".encode(), "\uf0ef\uf080\uf0ba".encode()),  # our marker, escaped
    (b"plain name.txt", b"plain name.txt"),
])
def test_known_names(name: bytes, stored: bytes) -> None:
    assert EXFAT.encode(name) == stored
    assert decode(stored) == name


def test_trailing_dots_and_spaces() -> None:
    assert SMB.encode(b"dot.") == "dot\uf02e".encode()
    assert SMB.encode(b"sp ") == "sp\uf020".encode()
    assert SMB.encode(b"a.b") == b"a.b"
    assert decode(SMB.encode(b"x. ")) == b"x. "


def test_no_encoding_is_the_identity() -> None:
    for n in (b"a:b", b"x\xff", "\uf03a".encode()):
        assert Codec().encode(n) == n


def test_any_name_round_trips_and_holds_nothing_refused() -> None:
    rng = random.Random(7)
    alphabet = [b for b in range(1, 256) if b != ord("/")] + [0xEF, 0x80, 0x83, 0xBF] * 20
    for _ in range(20000):
        name = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 16)))
        for codec in (EXFAT, SMB, STRICT):
            stored = codec.encode(name)
            assert decode(stored) == name, (codec, name, stored)
            assert not any(b in codec.forbidden for b in stored)
            assert stored[-1] not in codec.no_trailing
            if codec.utf8_only:
                stored.decode("utf-8")


def test_an_escaped_twin_decodes_exactly_and_folds_to_no_other_name() -> None:
    rng = random.Random(11)
    letters = b"aAbBzZ\xc3\xa9\xc3\x89.:- "
    seen: dict[bytes, bytes] = {}
    for _ in range(5000):
        name = bytes(rng.choice(letters) for _ in range(rng.randint(1, 6)))
        stored = EXFAT.escape(name)
        assert decode(stored) == name
        key = fold(stored)
        assert not any(chr(b).isalpha() for b in key if b < 0x80), stored
        assert seen.setdefault(key, name) == name  # two names never fold to one
