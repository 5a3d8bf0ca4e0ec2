"""State: the store protocol and its implementations (SQLite by default, Redis for replicas)."""
