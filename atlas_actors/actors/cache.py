"""The cache actor: owns the cache levels' lifecycle, disk writes and warming.

Reads go through the levels from the callers' threads (``cache/manager.py``); this
actor opens them (L1 in memory, L2 on disk), warms L1 from L2 at start, writes new
results to L2 off the callers' path, and records on a clean stop what the next session
needs to trust L2 again. When it crashes, reads bypass the cache until its next
incarnation has warmed a fresh L1; the table versions live in the manager, so entries
for tables written meanwhile are not revived.

Messages: :class:`StoreOnDisk`, :class:`WarmFromDisk`, ``Crash``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import pykka

from atlas_actors.actors.base import Crash, RoleActor
from atlas_actors.cache.changes import ExternalChanges, ShmCounter
from atlas_actors.cache.disk import DiskStore, fingerprint, outlast_timestamps
from atlas_actors.cache.lru import ByteLRU, Entry
from atlas_actors.cache.manager import CacheManager
from atlas_actors.config import StorageConfig

__all__ = ["CACHE_RULES", "CacheActor", "StoreOnDisk"]

log = logging.getLogger(__name__)

CACHE_RULES = 2
"""The version of what may be cached and how entries are kept; a clean session's disk
level is reused only under the same one. Raise it whenever a change would make an
entry stored before it wrong to serve (2: reads of ``sqlite_*`` tables, ``pragma_*``
functions and virtual tables are no longer cached)."""


@dataclass(frozen=True, slots=True)
class StoreOnDisk:
    """Write ``entry`` to L2."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class WarmFromDisk:
    """Fill L1 with the valid L2 entries (sent to itself at start)."""


class CacheActor(RoleActor):
    """Runs the cache levels for one storage."""

    def __init__(
        self,
        *,
        config: StorageConfig,
        manager: CacheManager,
        database: str,
        first_start: bool,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.config = config
        self.manager = manager
        self.database = database
        self.first_start = first_start
        self.l2: DiskStore | None = None
        self.l1: ByteLRU | None = None

    def on_start(self) -> None:
        """Open L2, trust it only as far as the last session allows, warm L1."""
        manager = self.manager
        if self.config.cache_disk:
            try:
                self.l2 = DiskStore(manager.directory, self.config.cache_disk_bytes)
            except Exception:
                log.exception("the disk cache at %s cannot be used", manager.directory)
                self.l2 = None
        if self.first_start and self.l2 is not None:
            self._resume_session(self.l2)
        self.l1 = ByteLRU(self.config.cache_memory_bytes)
        l2 = self.l2 if self.l2 is not None and self.l2.enabled else None
        manager.attach(self.l1, l2, self._send_to_disk)
        self.actor_ref.tell(WarmFromDisk())  # right after start, off the start path

    def _resume_session(self, l2: DiskStore) -> None:
        """Reuse the last session's versions if it closed cleanly on the same files.

        Every process opening the database shares L2: reading the record and marking it
        not clean are one transaction, under L2's lock, so only one opener takes up a
        clean session. Two that both did would count in the same epoch from the same
        versions and trust each other's entries, stored at other states of the database.
        """
        try:
            with l2.exclusive():
                resumed = self._take_up_clean_session(l2)
        except Exception:
            # Not knowing whether another opener takes the session up now, nor whether
            # this one's mark reached the disk: start afresh (the entries stay, in an
            # epoch this session does not count in).
            log.warning("the disk cache's last session cannot be taken up", exc_info=True)
            self.manager.restore(secrets.randbits(31), {})
            self.manager.resumed_files = None
            return
        if not resumed:
            # Unknown history (a crash, a session still open or taken up by another
            # process, the files changed, or entries stored under other rules of what
            # may be cached): nothing on disk is trusted. Emptied outside the lock: a
            # removed entry is only a miss, and a removed record one not clean.
            self.manager.restore(secrets.randbits(31), {})
            l2.clear()
            l2.save_meta({"clean": False, "epoch": self.manager.epoch})

    def _take_up_clean_session(self, l2: DiskStore) -> bool:
        """Continue the last session and mark it taken up (not clean); False if it cannot be."""
        meta = l2.load_meta()
        files = fingerprint(self.database)
        same_files = meta is not None and meta.get("fingerprint") == files
        same_rules = meta is not None and meta.get("rules") == CACHE_RULES
        if meta is None or not (meta.get("clean") and same_files and same_rules):
            return False
        versions = meta.get("versions")
        epoch = meta.get("epoch")
        if not isinstance(versions, dict) or not isinstance(epoch, int):
            return False
        restored = {str(k): int(v) for k, v in versions.items()}
        l2.save_meta({"clean": False, "epoch": epoch})
        self.manager.restore(epoch, restored)
        # Until the wal-index is watched (after the writer opens), only the files tell
        # of another process's commit: the storage compares them again then.
        self.manager.resumed_files = files
        return True

    def _send_to_disk(self, entry: Entry) -> None:
        # Bounded as a mailbox is (each message holds a whole result): past the bound
        # the entry stays out of L2, which only saves recomputing it later.
        if self.mailbox.qsize() >= self.config.mailbox_size:
            return
        # Between pykka marking a failing incarnation stopped and its on_crash detaching
        # the levels, reads still reach here: the entry then just stays out of L2.
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(StoreOnDisk(entry))

    def on_receive(self, message: Any) -> Any:
        """Write to L2, warm L1, or obey a control message."""
        if isinstance(message, WarmFromDisk):
            warmed = self.manager.warm_from_l2()
            log.debug("%d cache entries warmed from disk", warmed)
            return None
        if isinstance(message, StoreOnDisk):
            l2 = self.manager.l2
            entry = message.entry
            if l2 is not None and entry.epoch == self.manager.epoch:
                rows = [tuple(row) for row in entry.rows]
                l2.put(
                    entry.sql,
                    entry.params,
                    self.manager.document(entry),
                    rows,
                    self.config.cache_ttl,
                )
            return None
        if isinstance(message, Crash):
            self.crash_if_mine(message)
            return None
        return super().on_receive(message)

    def on_stop(self) -> None:
        """Record the session as cleanly closed, if nothing may have changed unseen.

        The next session trusts L2 if the files still match the fingerprint recorded
        here, so no commit after this storage's last check may be missing from both.
        The storage's connections are closed by now, but the wal-index counter's own
        (``changes.py``) is not: every commit still moves the counter. Through it the
        WAL is emptied into the database file, and the fingerprint is taken, then the
        counter checked: a commit before the fingerprint is seen here (the session is
        recorded as not clean, and the next start drops L2); one after it lands in the
        WAL, which was empty, and reaches the file only with new times (see
        :func:`~atlas_actors.cache.disk.outlast_timestamps`). Closing that connection
        last then deletes the empty WAL and leaves the file as fingerprinted.
        """
        self._detach()
        l2 = self.l2
        if l2 is not None:
            clean, files = self._final_state()
            # Only a storage that closes ends the session: this incarnation alone stopping
            # (supervisor.kill(how="stop")) leaves the storage running in this epoch, and
            # another process resuming a clean record would count in the same one.
            clean = clean and not self.stopping_alone
            l2.save_meta(
                {
                    "clean": clean,
                    "rules": CACHE_RULES,
                    "epoch": self.manager.epoch,
                    "versions": self.manager.versions(),
                    "fingerprint": files,
                }
            )
            l2.close()

    def _final_state(self) -> tuple[bool, dict[str, Any]]:
        """Whether the cache matches the files for sure, and their fingerprint."""
        external = self.manager.external
        if external is None:
            # No wal-index was watched (the storage turned the cache off, or did not get
            # as far as mapping it): nothing says that no other process committed.
            return False, fingerprint(self.database)
        counter = external.counter
        settled = isinstance(counter, ShmCounter) and counter.empty_wal()
        settled = settled and outlast_timestamps(self.database)
        files = fingerprint(self.database)
        clean = settled and files["wal"] == 0 and not self._others_committed(external)
        return clean, files

    def _others_committed(self, external: ExternalChanges) -> bool:
        """True if another process may have committed since the last check."""
        try:
            # Dropping too keeps the count honest should anything still read.
            if external.check(self.manager.other_process_committed):
                return True
            return external.moved()  # a COMMIT the writer never settled: ours or another's
        except (ValueError, OSError):  # the wal-index mapping is gone: cannot tell
            log.warning("cannot check for other processes' commits at close: L2 not kept")
            return True

    def on_crash(self, current: Any, error: BaseException | None) -> None:
        """Reads bypass the cache until the next incarnation."""
        super().on_crash(current, error)
        self._detach()
        if self.l2 is not None:
            self.l2.close()

    def _detach(self) -> None:
        self.manager.detach(self.l1)
