"""The producer side: event builders, an HTTP batch tracker with the engine's contract, demo traffic."""
