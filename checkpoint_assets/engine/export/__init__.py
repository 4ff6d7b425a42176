"""The export file: reading the SQLite source, its snapshot, the file format, writer and reader."""
