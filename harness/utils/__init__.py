"""Small utilities with no harness dependencies: atomic file writes, the clock, paths."""
