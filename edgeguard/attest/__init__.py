"""edgeguard.attest."""
