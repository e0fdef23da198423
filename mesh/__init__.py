"""Meshmarket shared core: configuration, keys, chain gateway, p2p adapter, errors, CLI root."""

__version__ = "0.1.0"
