"""vl backends."""
