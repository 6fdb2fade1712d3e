"""Schema files (package data)."""
