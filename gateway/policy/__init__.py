"""The policy: scope syntax, path canonicalization, the YAML model and loader, and the compiled matcher."""
