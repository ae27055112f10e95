"""masks backends."""
