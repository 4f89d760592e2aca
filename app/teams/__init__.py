"""Teams and their API keys: the store, the admin API's schemas and the ``tollway teams|keys`` CLI."""
