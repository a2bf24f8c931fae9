"""Rulesets: the JSON language's schema, validation, compilation to Python closures, storage."""
