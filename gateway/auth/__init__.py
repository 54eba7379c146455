"""Who is calling: principals, JWT verification (per-issuer allowlists, JWKS), Basic (argon2id), the authenticator."""
