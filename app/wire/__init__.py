"""Wire formats: each client/provider format translated to and from the canonical form once."""
