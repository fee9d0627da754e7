"""TLS for `trainfer serve`: uvicorn's own ssl options, with the certificate and key checked first.

uvicorn loads the certificate only once it starts: a wrong file is then a traceback from inside its
start-up, and an encrypted key without a password makes OpenSSL ask for one on the terminal (a server
under a supervisor hangs). Here the pair is loaded once, the same way, before the port is bound, and
every such mistake is one ConfigError that says what to change.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainfer.errors import ConfigError
from trainfer.runtime.keys import loose_mode, read_file

PASSWORD_ENV = "TRAINFER_SSL_KEYFILE_PASSWORD"  # an encrypted key's password: never on the command line (ps)


class _NoPassword(Exception):
    """OpenSSL asked for a password that was not given (raised by the callback instead of a tty prompt)."""


def check_tls(certfile: str | Path | None, keyfile: str | Path | None, password: str | None = None,
              warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """uvicorn's ssl options for ``certfile`` and ``keyfile`` (PEM), or {} when neither is given.

    Raises ConfigError for one without the other, a missing, unreadable or wrong file, a key that does
    not match the certificate, and an encrypted key without ``password`` (or a wrong one). A private key
    that others may read is a ``warn``ing."""
    if certfile is None and keyfile is None:
        return {}
    if certfile is None or keyfile is None:
        given, missing = ("--ssl-certfile", "--ssl-keyfile") if keyfile is None else ("--ssl-keyfile", "--ssl-certfile")
        raise ConfigError(f"{given} needs {missing} too",
                          hint="TLS takes both: --ssl-certfile CERT.pem --ssl-keyfile KEY.pem (or neither)")
    cert = read_file("--ssl-certfile", Path(certfile), hint="--ssl-certfile takes a PEM file")
    key = read_file("--ssl-keyfile", Path(keyfile), hint="--ssl-keyfile takes a PEM file")
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        what = "holds a private key, not a certificate" if b"PRIVATE KEY-----" in cert else "is not a PEM certificate"
        raise ConfigError(f"--ssl-certfile {certfile} {what}",
                          hint="--ssl-certfile takes the server's PEM certificate (-----BEGIN CERTIFICATE-----)")
    if b"PRIVATE KEY-----" not in key:
        what = ("holds a certificate, not a private key" if b"-----BEGIN CERTIFICATE-----" in key
                else "is not a PEM private key")
        raise ConfigError(f"--ssl-keyfile {keyfile} {what}",
                          hint="--ssl-keyfile takes the certificate's PEM private key (-----BEGIN PRIVATE KEY-----)")

    asked = []  # OpenSSL asks only for an encrypted key: a failure after it asked is the password's

    def give_password() -> str:
        asked.append(True)
        if password is None:
            raise _NoPassword
        return password

    try:  # exactly what uvicorn will do (config.create_ssl_context), but never prompting
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(certfile), str(keyfile), give_password)
    except _NoPassword:
        raise ConfigError(f"--ssl-keyfile {keyfile} is encrypted and no password was given",
                          hint=f"set the environment variable {PASSWORD_ENV}, or give an unencrypted key "
                               "(openssl pkey -in KEY -out PLAIN_KEY)") from None
    except ssl.SSLError as exc:
        reason = (exc.reason or "").upper()
        if "KEY_VALUES_MISMATCH" in reason:
            raise ConfigError(f"--ssl-keyfile {keyfile} is not the private key of --ssl-certfile {certfile}",
                              hint="give the key the certificate was issued for") from None
        if asked:
            raise ConfigError(f"--ssl-keyfile {keyfile}: wrong password in {PASSWORD_ENV}") from None
        raise ConfigError(f"cannot load --ssl-certfile {certfile} with --ssl-keyfile {keyfile}: {exc.reason or exc}",
                          hint="both must be PEM files: the certificate (chain) and its private key") from None
    mode = loose_mode(keyfile)
    if warn is not None and mode is not None:
        warn(f"warning: --ssl-keyfile {keyfile} may be read by others (mode {mode}): chmod 600 it")
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile), "ssl_keyfile_password": password}

