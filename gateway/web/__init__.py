"""ASGI plumbing every layer shares: scope and body helpers, JSON error responses and the hardened uvicorn protocol."""
