"""Fast paths, one folder per operation, each beside its naive reference."""
