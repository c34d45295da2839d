"""Reading and writing key files.

Key files are text: a PEM-style block ``EDGEGUARD <KIND>`` around base64 of
the canonical CBOR encoding from :mod:`edgeguard.crypto.keys`. Private key
files are created with mode 0600 and loading refuses a private key file that
group or others can read (like ssh), unless the caller passes
``unsafe_allow_open_permissions=True``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgeguard.bundle.verify import TrustStore
from edgeguard.crypto.encoding import armor, unarmor
from edgeguard.crypto.keys import (
    DeviceKey,
    DevicePublicKey,
    SignerKey,
    SignerPublicKey,
    decode_private,
    decode_public,
    encode_private,
)
from edgeguard.errors import KeyFileError, UsageError
from edgeguard.fsutil import atomic_write

__all__ = [
    "load_device_key",
    "load_device_public",
    "load_signer_key",
    "load_signer_public",
    "load_trust_store",
    "read_passphrase",
    "write_keypair",
]

_PRIVATE = "PRIVATE KEY"
_PUBLIC = "PUBLIC KEY"
PASSPHRASE_ENV = "EDGEGUARD_PASSPHRASE"  # noqa: S105 - a variable name, not a secret


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise UsageError(f"{what} {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{what} {path} is a directory, expected a key file") from exc
    except PermissionError as exc:
        raise KeyFileError(f"{what} {path} cannot be read (permission denied)") from exc


def read_passphrase(passphrase_file: Path | None) -> bytes | None:
    """The passphrase from ``passphrase_file`` or ``$EDGEGUARD_PASSPHRASE`` (else None)."""
    if passphrase_file is not None:
        data = _read(passphrase_file, "passphrase file").rstrip(b"\r\n")
        if not data:
            raise KeyFileError(f"passphrase file {passphrase_file} is empty")
        return data
    env = os.environb.get(PASSPHRASE_ENV.encode())
    return env if env else None


def write_keypair(
    private: SignerKey | DeviceKey,
    private_path: Path,
    public_path: Path,
    *,
    passphrase: bytes | None = None,
    overwrite: bool = False,
) -> None:
    """Write a private key (mode 0600) and its public key file."""
    for p in (private_path, public_path):
        if p.exists() and not overwrite:
            raise UsageError(f"{p} already exists", hint="choose another directory or --force")
    priv = armor(_PRIVATE, encode_private(private, passphrase=passphrase)).encode()
    atomic_write(private_path, priv, mode=0o600)
    atomic_write(public_path, armor(_PUBLIC, private.public.encode()).encode(), mode=0o644)


def _refuse_other_kind(raw: bytes, path: Path, expected: str) -> None:
    """A key file of the other kind (a public key given for a private one, or the
    reverse) is the wrong key type: a KeyFileError, not a malformed file."""
    other = _PUBLIC if expected == _PRIVATE else _PRIVATE
    if raw.lstrip().startswith(f"-----BEGIN EDGEGUARD {other}-----".encode()):
        raise KeyFileError(
            f"{path} is a {other.lower()}, expected a {expected.lower()}",
            hint="give the .key file"
            if expected == _PRIVATE
            else "give the .pub file (a private key never leaves its owner)",
        )


def _load_private(
    path: Path, passphrase: bytes | None, unsafe_allow_open_permissions: bool
) -> SignerKey | DeviceKey:
    path = Path(path)
    raw = _read(path, "key file")
    _refuse_other_kind(raw, path, _PRIVATE)
    data = unarmor(raw, kind=_PRIVATE, source=str(path))
    if not unsafe_allow_open_permissions:
        mode = os.stat(path).st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise KeyFileError(
                f"private key {path} is readable by group or others (mode {stat.S_IMODE(mode):o})",
                hint=f"run: chmod 600 {path}",
            )
    return decode_private(data, source=str(path), passphrase=passphrase)


def load_signer_key(
    path: Path, *, passphrase: bytes | None = None, unsafe_allow_open_permissions: bool = False
) -> SignerKey:
    """Load a signer private key."""
    key = _load_private(path, passphrase, unsafe_allow_open_permissions)
    if not isinstance(key, SignerKey):
        raise KeyFileError(f"{path} is a device key, expected a signer key")
    return key


def load_device_key(
    path: Path, *, passphrase: bytes | None = None, unsafe_allow_open_permissions: bool = False
) -> DeviceKey:
    """Load a device private key."""
    key = _load_private(path, passphrase, unsafe_allow_open_permissions)
    if not isinstance(key, DeviceKey):
        raise KeyFileError(f"{path} is a signer key, expected a device key")
    return key


def _load_public(path: Path) -> SignerPublicKey | DevicePublicKey:
    data = _read(Path(path), "public key file")
    _refuse_other_kind(data, Path(path), _PUBLIC)
    return decode_public(unarmor(data, kind=_PUBLIC, source=str(path)), source=str(path))


def load_signer_public(path: Path) -> SignerPublicKey:
    """Load a signer public key."""
    key = _load_public(path)
    if not isinstance(key, SignerPublicKey):
        raise KeyFileError(f"{path} is a device public key, expected a signer public key")
    return key


def load_device_public(path: Path) -> DevicePublicKey:
    """Load a device public key."""
    key = _load_public(path)
    if not isinstance(key, DevicePublicKey):
        raise KeyFileError(f"{path} is a signer public key, expected a device public key")
    return key


def load_trust_store(paths: list[Path] | tuple[Path, ...]) -> TrustStore:
    """A trust store from signer public key files (at least one)."""
    if not paths:
        raise UsageError(
            "no trust store given: verification always needs the trusted signer key",
            hint="pass --trust signer.pub",
        )
    return TrustStore.of(load_signer_public(p) for p in paths)
