"""Meshmarket ledger package."""
