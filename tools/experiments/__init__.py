"""tools/experiments package."""
