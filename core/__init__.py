"""Shared, stage-independent pieces: config, images, preprocessing, models and the bundle format."""
