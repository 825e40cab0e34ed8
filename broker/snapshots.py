"""Snapshots of the tables in a directory, for a broker on the Kafka log (``--snapshots DIR``).

A snapshot is a RocksDB checkpoint (hard links where the directory is on the same disk,
copies elsewhere) with a manifest: the log it belongs to, the format, and the LSN its tables
have applied (read from the checkpoint itself, so that it is exact however far the live
tables have moved on meanwhile).

    DIR/snap-00000000000000012345/  db/ (the checkpoint)  manifest.json

A broker that starts without tables (its disk was lost) restores the newest snapshot of its
log and replays the log from the snapshot's LSN on, instead of from the start. Snapshots of
another log or of another format are passed over with a warning; with none usable, the whole
log is replayed. The newest ``keep`` snapshots stay.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from rocksdict import Checkpoint

from sluice.broker.files import write_durably
from sluice.broker.partition.processor import APPLIED
from sluice.broker.storage import RocksDBStore

FORMAT = 1
log = logging.getLogger("sluice.snapshots")


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path
    applied: int


class Snapshots:
    def __init__(self, directory: Path, log_url: str, *, keep: int = 3) -> None:
        self.dir = Path(directory)
        self.log_url = log_url
        self.keep = keep
        self.dir.mkdir(parents=True, exist_ok=True)

    def take(self, store: RocksDBStore) -> Snapshot:
        """Checkpoint ``store`` (blocking: run it off the event loop), then drop the oldest."""
        tmp = self.dir / f".taking-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        Checkpoint(store.db).create_checkpoint(str(tmp / "db"))
        copy = RocksDBStore(tmp / "db")
        try:
            raw = copy.get("meta", APPLIED)
        finally:
            copy.close()
        applied = struct.unpack(">Q", raw)[0] if raw else 0
        manifest = {"format": FORMAT, "log": self.log_url, "applied": applied}
        write_durably(tmp / "manifest.json", json.dumps(manifest).encode())
        final = self.dir / f"snap-{applied:020d}"
        if final.exists():  # (nothing applied since the last one)
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
        for old in self._all()[self.keep :]:
            shutil.rmtree(old.path, ignore_errors=True)
        return Snapshot(final, applied)

    def restore(self, db: Path) -> Snapshot | None:
        """Copy the newest usable snapshot's tables to ``db`` (which must not exist)."""
        for snap in self._all():
            tmp = db.with_name(db.name + ".restoring")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(snap.path / "db", tmp)
            tmp.rename(db)
            log.warning(
                "restored the tables from the snapshot %s (LSN %d); the log is replayed "
                "from there", snap.path, snap.applied,
            )  # fmt: skip
            return snap
        return None

    def _all(self) -> list[Snapshot]:
        """This log's usable snapshots, newest first."""
        out = []
        for path in sorted(self.dir.glob("snap-*"), reverse=True):
            try:
                manifest = json.loads((path / "manifest.json").read_text())
            except (OSError, ValueError):
                log.warning("passing over the snapshot %s: no readable manifest", path)
                continue
            if manifest.get("format") != FORMAT:
                log.warning("passing over the snapshot %s: format %s, not %d",
                            path, manifest.get("format"), FORMAT)  # fmt: skip
            elif manifest.get("log") != self.log_url:
                log.warning("passing over the snapshot %s: it is of the log %s",
                            path, manifest.get("log"))  # fmt: skip
            else:
                out.append(Snapshot(path, int(manifest["applied"])))
        return out

    def latest(self) -> Snapshot | None:
        found = self._all()
        return found[0] if found else None
