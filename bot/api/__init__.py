"""REST API ``/api/v1`` (DESIGN §10, §13): scoped, hashed API tokens; conversations, messages, customers,
articles, agents, outgoing webhooks; OpenAPI document at ``/api/v1/openapi.json``."""
