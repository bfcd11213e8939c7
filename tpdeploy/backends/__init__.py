"""Backends: one module each, one small interface (`Runner`), as Polygraphy's backend/ loaders and runners."""
