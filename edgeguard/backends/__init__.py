"""edgeguard.backends."""
