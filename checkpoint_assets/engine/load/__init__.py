"""Loading: convert SqliteSaver rows, load batches into PostgreSQL, the target's tables."""
