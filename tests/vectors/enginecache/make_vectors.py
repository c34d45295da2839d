"""Regenerate the engine cache test vectors (explicit flag only).

    python tests/vectors/enginecache/make_vectors.py --regenerate

The device key is the frozen x25519 key of the bundle vectors. Regenerating is a format
decision, not a routine step: ``tests/crypto/test_enginecache.py`` recomputes every value
by a second path (HKDF from HMAC, AES-GCM chunk by chunk) and compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SALT = bytes(range(32))
CHUNK = 1 << 16
ARTIFACT = bytes(i * 7 % 251 for i in range(70_000))  # two chunks, the last one short
BINDING = {
    "bundle": "digits",
    "manifest_sha256": "11" * 32,
    "member": "digits_mlp-fp32",
    "member_sha256": "22" * 32,
    "recipe_sha256": "33" * 32,
    "kind": "ort-model",
    "library": "onnxruntime 1.32.0",
    "hardware": {"machine": "x86_64", "cpu": "Example CPU @ 2.00GHz", "flags": "avx avx2 fma"},
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--regenerate", action="store_true", help="overwrite the frozen vectors")
    if not ap.parse_args().regenerate:
        print("refusing to touch frozen vectors without --regenerate", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE.parents[2]))
    from edgeguard.crypto.enginecache import Binding, derive_cache_key, seal_entry
    from edgeguard.keystore import load_device_key

    device = load_device_key(
        HERE.parent / "bundle" / "device-x25519.key", unsafe_allow_open_permissions=True
    )
    key = derive_cache_key(device)
    b = {k: bytes.fromhex(v) if k.endswith("sha256") else v for k, v in BINDING.items()}
    binding = Binding(**b)
    entry = b"".join(seal_entry(key, binding, ARTIFACT, salt=SALT, chunk_size=CHUNK))
    (HERE / "entry.sealed").write_bytes(entry)
    doc = {
        "device_key": "../bundle/device-x25519.key",
        "device_key_id": device.public.key_id.hex(),
        "cache_key": key.hex(),
        "binding": BINDING,
        "binding_cbor": binding.encode().hex(),
        "binding_sha256": binding.digest().hex(),
        "group": binding.group().hex(),
        "salt": SALT.hex(),
        "chunk": CHUNK,
        "artifact": "bytes(i * 7 % 251 for i in range(70000))",
        "artifact_sha256": hashlib.sha256(ARTIFACT).hexdigest(),
        "entry_file": "entry.sealed",
        "entry_sha256": hashlib.sha256(entry).hexdigest(),
        "entry_size": len(entry),
    }
    (HERE / "expected.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
