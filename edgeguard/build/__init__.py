"""edgeguard.build."""
