"""Correlate: the pure fold of lifecycle records over run state into finished spans and metric observations."""
