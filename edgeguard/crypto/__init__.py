"""Cryptographic building blocks, all from ``cryptography`` (no home-made primitives).

Keys and key ids (:mod:`.keys`), hybrid ECDSA P-256 + ML-DSA-65 signatures
(:mod:`.sign`), HPKE data-key wrapping (:mod:`.wrap`) and the chunked STREAM
AEAD (:mod:`.stream`). This package never imports inference or GPU libraries.
"""
