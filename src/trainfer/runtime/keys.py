"""Key files for signed and encrypted bundles: make them, and read them with one clear error when they are wrong.

Signing keys are EC P-256 PEM files (private: PKCS#8, unencrypted, mode 0600; public: SubjectPublicKeyInfo),
the kind the OpenSSF ``model_signing`` tool reads. A bundle key is a file of exactly 32 random bytes (AES-256),
mode 0600. ``cryptography`` is imported on first use (the ``secure`` extra).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from trainfer._imports import require_extras
from trainfer.errors import ConfigError, OutputError, TrainferError

PRIVATE_NAME, PUBLIC_NAME, SYMMETRIC_NAME = "trainfer.key", "trainfer.pub", "bundle.key"
KEY_BYTES = 32
# the curves model_signing signs with; Ed25519, RSA and other curves are refused by it
SIGNING_CURVES = ("secp256r1", "secp384r1", "secp521r1")


class KeyFileError(TrainferError):
    """A key file is missing, of the wrong kind, or cannot be read."""


# 32+ characters of hex or base64 with a digit and no dot: how a key looks when it is passed where its file's
# path belongs (`--key "$(cat bundle.key | base64)"`, TRAINFER_BUNDLE_KEY=<hex>); a path rarely looks so
_KEY_LIKE = re.compile(r"(?=[^.]*\d)[A-Za-z0-9+/=_-]{32,}")


def shown(path: str | Path) -> str:
    """A key option's value as an error line may show it: the value, unless it names no file and looks like
    key material itself (a PEM block, or a long hex/base64 string). Error lines end up in terminals, CI logs
    and tickets; the key must not."""
    text = str(path)
    if "-----BEGIN" in text or "\n" in text or _KEY_LIKE.fullmatch(text):
        try:
            if Path(text).exists():
                return text
        except OSError:  # a name too long to be a path
            pass
        return "(value not shown: it looks like a key itself, not the path of a key file)"
    return text


def _read(path: str | Path, option: str, what: str) -> bytes:
    path = Path(path)
    if not path.exists():
        env = " (TRAINFER_BUNDLE_KEY names the file too, not the key)" if what == "bundle key" else ""
        raise KeyFileError(f"{option} {shown(path)}: no such file", hint=f"pass the path of the {what} file{env}")
    if path.is_dir():
        raise KeyFileError(f"{option} {path} is a directory, not a {what} file", hint=f"pass the {what} file itself")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{option} {path} cannot be read: {exc.strerror}") from None


_warned: set[str] = set()


def warn_if_loose(path: str | Path, option: str) -> None:
    """A secret key readable by others works, but says so on stderr (as ssh does, without refusing); once per
    file and process (serve reads the key to check the bundle, then again to serve it)."""
    mode = loose_mode(path)
    if mode is not None and str(Path(path).resolve()) not in _warned:
        _warned.add(str(Path(path).resolve()))
        print(f"warning: {option} {path} is readable by other users (mode {mode}); chmod 600 {path}",
              file=sys.stderr)


def loose_mode(path: str | Path) -> str | None:
    """The file's mode in octal when users other than its owner may access it (a secret there is exposed), else
    None (also when it cannot be read: the reader reports that)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None
    return f"{stat.S_IMODE(mode):04o}" if mode & (stat.S_IRWXG | stat.S_IRWXO) else None


def read_file(flag: str, path: Path, hint: str) -> bytes:
    """A secret file's bytes for the server's options (a TLS key, an API key file), or one ConfigError naming
    the option; a key pasted where its path belongs is not echoed (``shown``)."""
    try:
        if path.is_dir():
            raise ConfigError(f"{flag} {path} is a directory, not a file", hint=hint)
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{flag} {shown(path)} does not exist", hint=hint) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {flag} {path}: {exc.strerror}") from None


def symmetric_key(key: bytes | str | Path, option: str = "key") -> bytes:
    """The 32 bytes of an AES-256 bundle key: given as bytes, or as a key file's path (checked, permissions warned).
    Checks the ``secure`` extra too: every use of the key needs it, and the check comes before any work."""
    require_extras("secure")
    if isinstance(key, bytes | bytearray):
        raw = bytes(key)
        if len(raw) != KEY_BYTES:
            raise KeyFileError(f"{option}: a bundle key is {KEY_BYTES} bytes, not {len(raw)}",
                            hint="make one with `trainfer keys generate --symmetric --out DIR`")
        return raw
    raw = _read(key, option, "bundle key")
    if len(raw) != KEY_BYTES:
        kind = " (it is a PEM key, for signing)" if raw.lstrip().startswith(b"-----BEGIN") else ""
        raise KeyFileError(f"{option} {key} is not a bundle key: {len(raw)} bytes{kind}, a bundle key file holds "
                        f"exactly {KEY_BYTES} random bytes",
                        hint="make one with `trainfer keys generate --symmetric --out DIR`")
    warn_if_loose(key, option)
    return raw


def private_key(path: str | Path, option: str = "--key") -> Any:
    """The EC private key of a PEM file, refused with a clear error when it is a public key, another kind of key,
    protected by a password, or not a key."""
    require_extras("secure")
    from cryptography.hazmat.primitives import serialization

    raw = _read(path, option, "private key")
    if b"PUBLIC KEY-----" in raw:
        raise KeyFileError(f"{option} {path} is a public key; signing needs the private key",
                        hint=f"pass the private key made beside it ({PRIVATE_NAME}); the public one is for --trust")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise KeyFileError(f"{option} {path} is protected by a password; trainfer signs with an unencrypted key",
                        hint="make one with `trainfer keys generate --out DIR`") from None
    except Exception:  # ValueError, UnsupportedAlgorithm: not a key it can read
        raise KeyFileError(f"{option} {path} is not a PEM private key",
                        hint="make one with `trainfer keys generate --out DIR`") from None
    _check_curve(key.public_key(), path, option)
    warn_if_loose(path, option)
    return key


def public_key(path: str | Path, option: str = "--trust") -> Any:
    """The EC public key of a PEM file (a private key given here is refused: trust is given by public keys)."""
    require_extras("secure")
    from cryptography.hazmat.primitives import serialization

    raw = _read(path, option, "public key")
    if b"PRIVATE KEY-----" in raw:
        raise KeyFileError(f"{option} {path} is a private key; {option} takes the public key",
                        hint=f"pass the public key made beside it ({PUBLIC_NAME}), and keep the private one secret")
    try:
        key = serialization.load_pem_public_key(raw)
    except Exception:  # ValueError, UnsupportedAlgorithm: not a key it can read
        raise KeyFileError(f"{option} {path} is not a PEM public key",
                        hint=f"pass the {PUBLIC_NAME} made by `trainfer keys generate`") from None
    _check_curve(key, path, option)
    return key


def _check_curve(key: Any, path: str | Path, option: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    curve = getattr(getattr(key, "curve", None), "name", None)
    if not isinstance(key, ec.EllipticCurvePublicKey) or curve not in SIGNING_CURVES:
        # the public half is checked for a private key file too: name the algorithm, not the class
        algo = type(key).__name__.lstrip("_").removesuffix("PublicKey") or "unknown"
        article = "an" if algo[0] in "AEIOU" or algo == "RSA" else "a"
        kind = f"an EC key on curve {curve}" if curve else f"{article} {algo} key"
        raise KeyFileError(f"{option} {path} is {kind}; OpenSSF model signing takes EC P-256 (or P-384/P-521) keys",
                        hint="make a P-256 key pair with `trainfer keys generate --out DIR`")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (a secret is never readable by others, not even briefly),
    under a temporary name renamed into place."""
    _write_all([(path, data, mode)])


def _write_all(files: list[tuple[Path, bytes, int]]) -> None:
    """Write every file under a temporary name first, then rename them all: a key pair is replaced whole. Writing
    them one by one, a failure (disk full, Ctrl-C) between the two left a new private key beside the old public
    key, or, with the clean-up, no private key at all."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)  # the umask may have removed bits the public key should have
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise


def _check_targets(out: Path, names: list[str], force: bool) -> list[Path]:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; key files are written into a directory", hint="choose another --out")
    targets = [out / n for n in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise OutputError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                          "a key is never replaced by accident",
                          hint="choose another --out, or pass --force to replace it (what it signed or encrypted "
                               "then needs the old key)")
    for t in targets:
        if t.is_dir():
            raise OutputError(f"{t} is a directory", hint="choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}", hint="choose an --out you may write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: permission denied", hint="choose an --out you may write to")
    return targets


def generate_signing_keys(out: str | Path, force: bool = False) -> dict[str, str]:
    """Write an EC P-256 key pair into ``out``: trainfer.key (0600) and trainfer.pub (0644)."""
    require_extras("secure")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    priv_path, pub_path = _check_targets(Path(out), [PRIVATE_NAME, PUBLIC_NAME], force)
    key = ec.generate_private_key(ec.SECP256R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        _write_all([(priv_path, priv, 0o600), (pub_path, pub, 0o644)])  # never half a pair
    except OSError as exc:
        raise OutputError(f"cannot write keys in {out}: {exc.strerror}") from None
    return {"private_key": str(priv_path), "public_key": str(pub_path), "curve": "P-256"}


def generate_symmetric_key(out: str | Path, force: bool = False) -> dict[str, str]:
    """Write a 32-byte random AES-256 bundle key to ``out``/bundle.key (0600)."""
    (path,) = _check_targets(Path(out), [SYMMETRIC_NAME], force)
    try:
        _write_new(path, os.urandom(KEY_BYTES), 0o600)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    return {"key": str(path), "algorithm": "AES-256-GCM"}
