"""Stdlib-only helpers every layer may use: errors, files, ranks, trees, memory, paths."""
