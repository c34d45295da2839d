"""Regenerate the bundle format v1 test vectors (explicit flag only).

    python tests/vectors/bundle/make_vectors.py --regenerate

The vectors are frozen artifacts: once released, a v1 bundle must keep
opening with the same keys (sigstore's habit). Regenerating them is a format
decision, not a routine step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CREATED = 1_795_000_000  # 2026-11-18T...Z
EXPIRES = 1_895_000_000
OPEN_AT = 1_800_000_000
PLAINTEXT = b"edgeguard test vector model: not a real ONNX file\n" * 3
AUX = b'{"note": "second member"}'


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--regenerate", action="store_true", help="overwrite the frozen vectors")
    if not ap.parse_args().regenerate:
        print("refusing to touch frozen vectors without --regenerate", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE.parents[2]))
    from edgeguard.crypto.keys import DeviceKey, SignerKey
    from edgeguard.crypto.stream import encrypt_stream
    from edgeguard.keystore import write_keypair
    from edgeguard.packaging.packager import MemberSource, write_bundle

    signer = SignerKey.generate()
    write_keypair(signer, HERE / "signer.key", HERE / "signer.pub", overwrite=True)
    devices = []
    for kem in ("mlkem768-x25519", "x25519", "p256"):
        d = DeviceKey.generate(f"vec-{kem}", profile="jetson-agx-orin", kem=kem)  # type: ignore[arg-type]
        write_keypair(d, HERE / f"device-{kem}.key", HERE / f"device-{kem}.pub", overwrite=True)
        devices.append(d)
    header = write_bundle(
        HERE / "bundle-v1.egb",
        [MemberSource("model", PLAINTEXT), MemberSource("aux", AUX, role="aux", format="json")],
        name="vector",
        version=7,
        signer=signer,
        recipients=[d.public for d in devices],
        profiles=["jetson-agx-orin", "generic-cpu"],
        expires=EXPIRES,
        created=CREATED,
        chunk_size=65536,
    )
    data = bytearray((HERE / "bundle-v1.egb").read_bytes())
    data[-1] ^= 0x01
    (HERE / "bundle-v1-tampered-payload.egb").write_bytes(bytes(data))

    key = bytes(range(32))
    pt = bytes(i % 251 for i in range(65536 + 100))
    ct = b"".join(encrypt_stream(key, pt, 65536))
    expected = {
        "open_at": OPEN_AT,
        "name": "vector",
        "version": 7,
        "created": CREATED,
        "expires": EXPIRES,
        "signer_key_id": signer.public.key_id.hex(),
        "device_key_ids": {d.kem: d.public.key_id.hex() for d in devices},
        "members": {
            "model": {"sha256": hashlib.sha256(PLAINTEXT).hexdigest(), "hex": PLAINTEXT.hex()},
            "aux": {"sha256": hashlib.sha256(AUX).hexdigest(), "hex": AUX.hex()},
        },
        "payload_sha256": header.payload.digest.value.hex(),
        "bundle_sha256": hashlib.sha256((HERE / "bundle-v1.egb").read_bytes()).hexdigest(),
        "stream": {
            "key": key.hex(),
            "chunk_size": 65536,
            "plaintext": "bytes(i % 251 for i in range(65636))",
            "ciphertext_len": len(ct),
            "ciphertext_sha256": hashlib.sha256(ct).hexdigest(),
            "tag0": ct[65536 : 65536 + 16].hex(),
            "final_chunk": ct[65536 + 16 :].hex(),
        },
    }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print("vectors written to", HERE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
