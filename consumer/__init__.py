"""Meshmarket consumer package."""
