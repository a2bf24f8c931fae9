"""Measurement: the event archive's files (writer, compaction, retention) and the queries that read them."""
