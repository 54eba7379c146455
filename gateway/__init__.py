"""smsguard: a scope-aware authorization gateway for SMS APIs."""
