"""coffea-hpc."""
