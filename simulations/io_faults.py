"""Make fsync fail now and then under load: failed commits fail their calls, typed;
acknowledged writes all survive; the writer keeps serving.

    python simulations/io_faults.py [--seconds 5] [--threads 8] [--fault-every 0.5]

Faults come from a real apsw VFS (atlas_actors.faults.FaultyVFS): for 20 ms every
FAULT_EVERY seconds, every fsync raises SQLITE_IOERR.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atlas_actors as atlas
from atlas_actors.errors import AtlasError
from atlas_actors.faults import FaultyVFS


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--fault-every", type=float, default=0.5)
    args = parser.parse_args()
    vfs = FaultyVFS()
    acked: list[int] = []
    errors: Counter[str] = Counter()
    stop = threading.Event()
    counter = iter(range(1, 10**9))
    lock = threading.Lock()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "faults.db"
            with atlas.open(path, vfs=vfs.name, restart_max=10_000) as db:
                db.execute("CREATE TABLE items(id INTEGER PRIMARY KEY)")

                def work() -> None:
                    while not stop.is_set():
                        with lock:
                            n = next(counter)
                        try:
                            db.write("INSERT INTO items(id) VALUES (?)", [n])
                        except AtlasError as error:
                            errors[type(error).__name__] += 1
                        else:
                            acked.append(n)

                threads = [threading.Thread(target=work) for _ in range(args.threads)]
                for thread in threads:
                    thread.start()
                faults = 0
                deadline = time.monotonic() + args.seconds
                while time.monotonic() < deadline:
                    time.sleep(args.fault_every)
                    vfs.fail_syncs = apsw.IOError
                    time.sleep(0.02)
                    vfs.fail_syncs = None
                    faults += 1
                stop.set()
                for thread in threads:
                    thread.join(30)
            with atlas.open(path) as again:
                stored = {r.id for r in again.query("SELECT id FROM items")}
                integrity = again.query("PRAGMA integrity_check")[0][0]
    finally:
        vfs.unregister()
    lost = len(set(acked) - stored)
    print(f"io faults: {args.threads} threads, {args.seconds:g}s, {faults} fault windows of 20 ms")
    print(f"  acknowledged {len(acked)}, failed calls {dict(errors) or 'none'}")
    print(f"  lost acknowledged writes {lost}, integrity {integrity}")
    ok = lost == 0 and integrity == "ok" and len(acked) > 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
