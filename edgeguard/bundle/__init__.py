"""edgeguard.bundle."""
