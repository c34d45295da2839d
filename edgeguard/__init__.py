"""edgeguard: hardening ML inference on edge accelerators.

Layers, each depending only on the ones before it:

1. :mod:`edgeguard.crypto` - keys, hybrid (ECDSA P-256 + ML-DSA-65) signatures,
   HPKE key wrapping and the chunked STREAM AEAD. Only ``cryptography``.
2. :mod:`edgeguard.bundle` - the bundle format v1: data model, codec and the
   pure verification logic. No file I/O, no inference libraries.
3. :mod:`edgeguard.packaging` - packaging: ONNX checks, signing, encryption.
4. :mod:`edgeguard.backends` - inference backends (ONNX Runtime CPU by
   default, TensorRT on Jetson), imported lazily.
5. :mod:`edgeguard.guard` - input sanity, voting, failsafe, event log.
6. :mod:`edgeguard.runtime` - opening bundles on a device (state store,
   anti-rollback) and composing the guarded runtime.

The recipe-level API lives in :mod:`edgeguard.api`; importing this package
does not import onnxruntime, numba, tensorrt or pycuda.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# ONNX Runtime wheels carry Microsoft telemetry: on import they create a database under
# ~/.cache/Microsoft/DeveloperTools and keep a writer thread. A device runtime must not
# phone home or write files behind the operator's back, so edgeguard turns it off before
# anything imports onnxruntime (an explicit setting by the operator wins).
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__all__ = ["__version__"]
