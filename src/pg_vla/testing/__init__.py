"""Builders of random test models and folders (no hub downloads)."""
