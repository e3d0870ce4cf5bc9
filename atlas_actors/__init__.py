"""atlas-actors: an actor-based concurrent storage runtime on SQLite."""

from atlas_actors import errors

__all__ = ["errors"]
__version__ = "0.1.0"
