"""Data layer: dataset folders, validation, splits, media decoding, demo data."""
