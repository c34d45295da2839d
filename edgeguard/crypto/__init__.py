"""edgeguard.crypto."""
