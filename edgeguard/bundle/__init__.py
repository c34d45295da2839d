"""Bundle format v1: data model, codec and verification logic (no I/O).

See ``docs/bundle-format.md`` for the normative specification.
"""

from edgeguard.bundle.codec import ParsedPrefix, encode_prefix, parse_prefix
from edgeguard.bundle.model import MAGIC, Header, Limits, Manifest, Member
from edgeguard.bundle.verify import TrustStore, check_policy, verify_signature

__all__ = [
    "MAGIC",
    "Header",
    "Limits",
    "Manifest",
    "Member",
    "ParsedPrefix",
    "TrustStore",
    "check_policy",
    "encode_prefix",
    "parse_prefix",
    "verify_signature",
]
