"""Beacon: a real-time marketing trigger server (complex event processing on Redis)."""

__version__ = "0.1.0"
