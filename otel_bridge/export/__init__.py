"""Export: span encoding, the outbox drain, OTLP senders, metric instruments and the Prometheus endpoint."""
