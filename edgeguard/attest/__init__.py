"""Remote attestation of what a device runs (RATS, RFC 9334).

Layers, one way: ``measure`` (measurement log and PCR-style chain) <- ``eat``
(RFC 9711 claims in a COSE_Sign1) <- ``tpm`` (TPM 2.0 quotes; the attester
half needs tpm2-pytss, the verifier half only parses bytes) <- ``attester``
(measured load of a bundle, evidence) and ``reference`` (signed reference
values written next to a bundle) <- ``verifier`` (per-claim, EAR-style
result) with ``nonce`` (single-use challenge store). See docs/attestation.md.
"""
