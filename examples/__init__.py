"""Example consumers of the broker."""
