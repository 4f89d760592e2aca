"""Tollway's built-in provider simulator: a wire-faithful fake Anthropic + OpenAI upstream.

The gateway reaches it over real HTTP through the same adapters a real provider uses. Tests and
benchmarks drive it; the quick start serves it when no provider credentials are configured.
See docs/simulator.md for every endpoint, header and behaviour.
"""

from app.simulator.app import create_simulator_app
from app.simulator.config import SimulatorConfig

__all__ = ["SimulatorConfig", "create_simulator_app"]
