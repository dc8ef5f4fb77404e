"""Framework-free parts of FILM: spec, checkpoints, images, data, metrics."""
