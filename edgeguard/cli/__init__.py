"""edgeguard.cli."""
