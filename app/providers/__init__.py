"""Provider adapters: one for Anthropic, one for every OpenAI-compatible upstream."""
