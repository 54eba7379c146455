"""Gateway API keys: opaque `sgk_live_`/`sgk_test_` keys, stored as keyed hashes, grants in the token lineage.

format.py     what a key looks like (`<key id>_<secret>`), generating and parsing it
service.py    create, list, rotate, revoke, and verify on the hot path (HMAC-SHA256, cached)
slots.py      reading a key from a provider's own slot (X-API-KEY, apiKey, userId/password)
endpoints.py  the key API under the token mount, and the provider-shaped logins (BSG v2, SMSPortal,
              SMSGatewayCenter's regenerateAPIKey)
errors.py     refusals in the provider's own error shape on a mount whose policy enables a slot
"""
