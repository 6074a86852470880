"""Helpers shared by test modules (tests never import one another)."""
