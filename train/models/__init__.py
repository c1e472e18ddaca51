"""Models: loading from a path or hub id, the embedded tiny model, FLOP counts, sampling."""
