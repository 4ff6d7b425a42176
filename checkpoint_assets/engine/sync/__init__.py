"""Sync: the chain of export generations and keeping the target in step with the source."""
