"""A Lava Process whose model raises (guarded-runner tests); this package holds nothing else."""
