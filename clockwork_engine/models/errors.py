"""The error a model that cannot be loaded raises (its own module: every family's check and
the loader raise it, and the loader reads the families)."""


class ModelLoadError(ValueError):
    """A model directory is missing, incomplete, corrupt, pickled or mismatched."""
