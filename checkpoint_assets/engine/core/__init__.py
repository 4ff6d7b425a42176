"""The engine's shared core: errors, rows, crypto, codecs, workers, batches, selection."""
