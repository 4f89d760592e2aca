"""Tollway: an LLM gateway with team budgets, cheapest-adequate routing, prompt caching and a ledger."""

__version__ = "0.1.0"
