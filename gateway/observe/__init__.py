"""What happened: structlog access and audit events with redaction, and Prometheus metrics."""
