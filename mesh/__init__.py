"""Meshmarket's shared core: configuration, keys, typed ids and amounts, the error tree, the wire
protocol, the chain client, the contracts' events, the job's lifecycle, the market's actions and
the p2p adapter. It imports nothing above it (provider, consumer, ledger, the CLI)."""

__version__ = "0.1.0"
