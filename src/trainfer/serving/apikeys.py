"""API keys for `trainfer serve`: a key file of plain keys or ``sha256:HEX`` lines, kept as SHA-256 digests.

A ``sha256:HEX`` line is the SHA-256 of a key's UTF-8 bytes, so the file on the server holds no usable
secret; make one with ``printf %s "$KEY" | sha256sum`` (macOS: ``shasum -a 256``) and put ``sha256:``
before the 64 hex digits, or with ``hash_api_key(key)``. Plain keys are hashed as they are read: the
server holds digests only, and compares the digest of a request's key with each in constant time.

Error messages name the line, never its text: a malformed line may be a secret pasted wrongly.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path

from trainfer.errors import ConfigError
from trainfer.runtime.keys import loose_mode, read_file, shown

PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdefABCDEF")
_EMPTY = hashlib.sha256(b"").hexdigest()
# A line "NAME:..." whose NAME is a hash algorithm (sha512:, md5:) is a hash in a form this server does not
# take, not a key: refused rather than served as a plain key that no client could ever send.
_OTHER_HASHES = (frozenset(n.lower() for n in hashlib.algorithms_available) - {"sha256"}
                 | {"sha-1", "sha-256", "sha-384", "sha-512", "bcrypt", "scrypt", "argon2", "argon2id", "pbkdf2"})


def hash_api_key(key: str) -> str:
    """The ``sha256:HEX`` line for ``key`` (what ``printf %s KEY | sha256sum`` prints, prefixed)."""
    if not key or key != key.strip():
        raise ConfigError("an API key must be non-empty, without spaces at either end",
                          hint="the key file strips each line, so such a key could never match")
    return PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key(entry: str) -> tuple[str, bool]:
    """``(sha256:hex, was_plain)`` for one key-file entry; ValueError says why not, without the entry."""
    name, colon, rest = entry.partition(":")
    if colon and name.lower() == "sha256":
        if len(rest) != 64:
            raise ValueError(f"sha256: needs 64 hex digits, this line has {len(rest)} characters after it")
        if not set(rest) <= _HEX:
            raise ValueError("sha256: must be followed by hex digits (0-9, a-f) only")
        if rest.lower() == _EMPTY:  # `printf %s "$KEY" | sha256sum` with KEY unset: would admit no key at all
            raise ValueError("sha256: of the empty string (was the key's variable unset when it was hashed?)")
        return PREFIX + rest.lower(), False
    if colon and name.lower() in _OTHER_HASHES:
        raise ValueError(f"unknown prefix {name}: (only sha256:HEX hashes are taken)")
    return PREFIX + hashlib.sha256(entry.encode("utf-8")).hexdigest(), True


def normalize(entries: Iterable[str]) -> tuple[str, ...]:
    """Entries (plain keys or sha256: lines) as ``sha256:hex`` lines: what ServeConfig holds."""
    out = []
    for i, entry in enumerate(entries, 1):
        try:
            out.append(parse_key(entry.strip())[0])
        except ValueError as exc:
            raise ConfigError(f"API key {i}: {exc}") from None
    return tuple(out)


def digests(keys: Iterable[str]) -> list[bytes]:
    """The 32-byte digests of normalized ``sha256:hex`` lines."""
    return [bytes.fromhex(k[len(PREFIX):]) for k in keys]


def matches(token: bytes, keys: list[bytes]) -> bool:
    """Whether ``token`` (a request's key) is one of ``keys`` (digests): compared digest to digest with
    hmac.compare_digest against every key, without an early exit, so the time reveals no match."""
    if not token:  # no key sent: never a match, whatever the list holds
        return False
    digest = hashlib.sha256(token).digest()
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(digest, k)
    return ok


def read_api_keys(path: str | Path, warn: Callable[[str], None] | None = None) -> tuple[str, ...]:
    """The keys in ``path`` as ``sha256:hex`` lines. One key per line, plain or ``sha256:HEX``; blank
    lines and # comments ignored. A plain key in a file that others may read is a ``warn``ing."""
    path = Path(path)
    flag = f"--api-key-file {shown(path)}"  # shown(): a key pasted where the file's path belongs is not echoed
    raw = read_file("--api-key-file", path, hint="give a file with one key (or sha256:HEX) per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} is not a text file (not UTF-8)",
                          hint="give a text file with one key (or sha256:HEX) per line") from None
    keys, plain = [], 0
    for n, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            key, was_plain = parse_key(entry)
        except ValueError as exc:
            raise ConfigError(f"{flag} line {n}: {exc}",
                              hint="each line is a key, or sha256: and the 64 hex digits of its SHA-256") from None
        keys.append(key)
        plain += was_plain
    if not keys:
        raise ConfigError(f"{flag} holds no key", hint="put one key (or sha256:HEX) per line")
    mode = loose_mode(path)
    if plain and warn is not None and mode is not None:
        warn(f"warning: {flag} holds {plain} plain key{'s' if plain > 1 else ''} and others may read it "
             f"(mode {mode}): chmod 600 it, or store sha256:HEX lines instead")
    return tuple(keys)
