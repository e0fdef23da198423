"""Solidity sources, committed build artifacts, compile and deploy code."""
