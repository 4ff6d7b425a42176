"""The way back: PostgreSQL -> export -> SQLite, its verification and evidence."""
