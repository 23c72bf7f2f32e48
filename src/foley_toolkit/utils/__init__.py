"""Input/output helpers (media decoding and muxing) shared by the pipeline, data loading and the CLI."""
