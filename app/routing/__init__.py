"""Routing: pick the cheapest adequate model, keep deployments healthy, retry, verify and escalate.

* ``router``     — routes and concrete models → a ``Plan`` (candidates cheapest first, with verdicts).
* ``classifier`` — the fast task classifier behind ``auto`` routes.
* ``health``     — per-deployment circuit breaker and load balancing.
* ``retry``      — which upstream failures are retried and how long to wait.
* ``verify``     — does an answer pass (valid JSON, schema, not truncated, not a refusal)?
* ``jsonschema`` — the small JSON-schema subset ``verify`` checks against.
"""
