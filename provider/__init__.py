"""Meshmarket provider package."""
