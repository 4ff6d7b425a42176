"""A fleet of SQLite files into one PostgreSQL: the sources, their labels and names, the\nthread ids they share."""
