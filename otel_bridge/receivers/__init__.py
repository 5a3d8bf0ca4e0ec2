"""Receivers: transports that move bytes (HTTP tracker endpoint, file replay) and know nothing of meaning."""
