"""Tokens this gateway mints: signing, the token service (issue, refresh, revoke) and its HTTP endpoints."""
