"""What the daemon keeps on disk between runs (the state directory)."""
