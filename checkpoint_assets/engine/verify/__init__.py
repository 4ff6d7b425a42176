"""Verification: content views, batch comparison, certificates, readback, the checks, evidence."""
