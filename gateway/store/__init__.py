"""Shared state: the Store protocol with its memory and Redis implementations (revocations, records, counters)."""
