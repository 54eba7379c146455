"""The authorization decision (authenticate, match, check scopes) and the pure-ASGI GuardMiddleware around it."""
