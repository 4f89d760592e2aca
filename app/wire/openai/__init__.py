"""OpenAI Chat Completions wire format ↔ canonical form, one module per direction.

``client``: what an OpenAI-format client sends and receives (``parse_request``, ``encode_response``,
``ChunkEncoder``). ``provider``: what Tollway sends an OpenAI-compatible upstream and reads back
(``build_request``, ``parse_response``, ``ChunkDecoder``).

Mapping rules (both directions): system/developer messages → the system prompt; tool messages →
``tool_result`` blocks in a user turn; assistant ``tool_calls`` ↔ ``tool_use`` blocks; finish reasons
↔ stop reasons; usage ↔ usage with cached tokens (OpenAI's ``prompt_tokens`` includes them,
Anthropic's ``input_tokens`` does not).
"""
