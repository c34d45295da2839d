"""edgeguard.packaging."""
