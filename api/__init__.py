"""The aiohttp application: rulesets, ingest, profiles, actions, metrics."""
