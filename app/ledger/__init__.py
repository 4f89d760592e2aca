"""The usage ledger: one row per request, priced in Decimal, written exactly once off the hot path."""
