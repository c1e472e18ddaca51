"""Console output: stage banners, the settings and summary blocks, progress lines, quieter libraries."""
