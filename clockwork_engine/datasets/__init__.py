"""Datasets: the shapes world (captioned procedural scenes), which the demo model is trained on,
the distillations default to and the evaluation scores."""
