"""Authentication: Tollway keys → the team (Principal) a request belongs to."""
