"""Security verbs: make keys, sign a bundle, verify one (OpenSSF model-signing format).

A failed verification is a user-facing error like any other: one ``error:`` line naming what failed (not
signed, signed by another key, which file changed, a damaged signature) and exit code 2; exit 0 means verified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainfer.cli._common import JsonFlag, _emit, _verb, app

keys_app = typer.Typer(help="Make key files: an EC P-256 pair for signing, or a 32-byte bundle key for encryption.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
@_verb("secure")
def generate(
    out: Annotated[Path, typer.Option(help="Directory to write the key files into.")] = ...,
    symmetric: Annotated[bool, typer.Option(
        "--symmetric", help="Write a 32-byte AES-256 bundle key (bundle.key) for --encrypt-key instead of a "
                            "signing key pair.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files (what they signed or "
                                                        "encrypted then needs the old keys).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Make keys. By default an EC P-256 pair: trainfer.key (private, mode 0600) and trainfer.pub (public).

    With --symmetric: bundle.key, 32 random bytes (mode 0600), for export/optimize --encrypt-key and
    predict --key / serve --key-file. Existing key files are never replaced without --force.

    Example: trainfer keys generate --out keys
    """
    from trainfer.runtime.keys import generate_signing_keys, generate_symmetric_key

    if symmetric:
        record = generate_symmetric_key(out, force)
        human = f"[bold]bundle key[/] {record['key']} (32 bytes, AES-256-GCM, mode 600): keep it secret"
    else:
        record = generate_signing_keys(out, force)
        human = (f"[bold]private key[/] {record['private_key']} (mode 600: keep it secret; signs bundles)\n"
                 f"[bold]public key[/] {record['public_key']} (give it to whoever verifies: --trust)")
    _emit(record, as_json, human)


@app.command()
@_verb("secure")
def sign(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (from export or optimize).")],
    key: Annotated[Path, typer.Option(help="EC private key file (PEM), e.g. from `trainfer keys generate`.")] = ...,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing signature.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Sign a bundle: writes BUNDLE/model.sig, an OpenSSF model-signing signature over every other file.

    The bundle's own hashes are checked first. The stock tool verifies it too:
    model_signing verify key BUNDLE --signature BUNDLE/model.sig --public_key trainfer.pub

    Example: trainfer sign bundles/digits --key keys/trainfer.key
    """
    from trainfer.runtime.signing import sign_bundle

    record = sign_bundle(bundle, key, force)
    _emit(record, as_json, f"[bold]signed[/] {bundle} -> {record['signature']} "
                           f"({', '.join(record['signed_files'])})")


@app.command()
@_verb("secure")
def verify(
    bundle: Annotated[Path, typer.Argument(help="A signed bundle directory.")],
    trust: Annotated[Path, typer.Option(help="Public key file (PEM) of the signer you trust.")] = ...,
    as_json: JsonFlag = False,
) -> None:
    """Verify a bundle's signature against a trusted public key (exit 0: verified, 2: refused).

    Prints "verified" and the files covered, or one error line naming what failed: not signed, signed by
    another key, which file changed, a damaged signature file.

    Example: trainfer verify bundles/digits --trust keys/trainfer.pub
    """
    from trainfer.runtime.signing import verify_bundle

    record = verify_bundle(bundle, trust)
    _emit(record, as_json, f"[bold]verified[/] {bundle}: signed by {trust}, "
                           f"{len(record['signed_files'])} files unchanged ({', '.join(record['signed_files'])})")
