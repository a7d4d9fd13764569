"""The ingest service: HTTP API -> Kafka events topic."""
