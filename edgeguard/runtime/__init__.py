"""edgeguard.runtime."""
