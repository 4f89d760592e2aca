"""OpenAI Responses API (``POST /v1/responses``): request parsing, answer and stream encoding.

Tollway is stateless: every request carries its whole conversation in ``input``; nothing is stored,
so ``previous_response_id``, ``conversation`` and item references are refused with a clear 400.
"""

from app.wire.responses.codec import ResponsesCodec
from app.wire.responses.output import response_json
from app.wire.responses.request import parse_request
from app.wire.responses.stream import ResponsesStreamEncoder

__all__ = ["ResponsesCodec", "ResponsesStreamEncoder", "parse_request", "response_json"]
