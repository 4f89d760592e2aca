"""Prompt caching (breakpoints on Claude requests) and the opt-in response cache."""
