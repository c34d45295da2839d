"""edgeguard.guard."""
