"""Beacon benchmarks: `python -m bench all` starts its own Redis and Beacon, drives them, reports."""
