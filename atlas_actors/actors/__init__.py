"""The actors of atlas-actors: writer, readers and their pool, supervisor."""
