"""Rulesets: the JSON language's schema, validation, compilation to the condition engine, storage."""
