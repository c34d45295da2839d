"""edgeguard.fieldtest."""
