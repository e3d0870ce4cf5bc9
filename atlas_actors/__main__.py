"""``python -m atlas_actors``: the ``atlas-actors`` command (demo, check, config)."""

from __future__ import annotations

import sys

from atlas_actors.cli import main

if __name__ == "__main__":
    sys.exit(main())
