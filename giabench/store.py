"""The run folder's SQLite store: one row per finished cell, one per reconstructed image.

A cell's rows are written in one transaction after the cell has finished, so a run killed at any moment holds only
whole cells, and a rerun skips every cell whose id is already stored. Reconstruction grids are PNG files beside the
database, written before the transaction commits. One process at a time runs in a folder (``exclusive``); a full disk
or a folder that is not a run folder is reported in one line, and what was stored stays intact.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from giabench.errors import GiabenchError

DB_NAME = "results.sqlite"
CELL_COLUMNS = {
    "cell": "TEXT PRIMARY KEY", "suite": "TEXT", "attack": "TEXT", "defense": "TEXT", "dataset": "TEXT",
    "model": "TEXT", "protocol": "TEXT", "batch_size": "INTEGER", "seed": "INTEGER", "psnr": "REAL", "ssim": "REAL",
    "lpips": "REAL", "mse": "REAL", "label_acc": "REAL", "label_set_acc": "REAL", "distinct_labels": "INTEGER",
    "exact": "INTEGER", "iterations": "INTEGER", "wall_s": "REAL", "epsilon": "REAL", "delta": "REAL",
    "bytes": "INTEGER", "attack_params": "TEXT", "defense_params": "TEXT", "model_params": "TEXT",
    "protocol_params": "TEXT", "selection": "TEXT", "threat_model": "TEXT", "lpips_source": "TEXT", "device": "TEXT",
    "versions": "TEXT", "config": "TEXT", "image": "TEXT", "finished_at": "TEXT", "status": "TEXT", "note": "TEXT",
    "extra": "TEXT", "hardware": "TEXT", "threads": "INTEGER", "dtype": "TEXT", "adjacency": "TEXT", "trace": "TEXT",
    "rouge1": "REAL", "rouge2": "REAL", "token_acc": "REAL",
}
# added after the first release; older run folders gain them empty
ADDED_COLUMNS = ("status", "note", "extra", "hardware", "threads", "dtype", "adjacency", "trace", "rouge1", "rouge2",
                 "token_acc")
IMAGE_COLUMNS = {
    "cell": "TEXT", "image": "INTEGER", "matched": "INTEGER", "label": "INTEGER", "label_pred": "INTEGER",
    "mse": "REAL", "psnr": "REAL", "ssim": "REAL", "lpips": "REAL",
    "rouge1": "REAL", "rouge2": "REAL", "token_acc": "REAL", "text": "TEXT", "text_pred": "TEXT",
}
ADDED_IMAGE_COLUMNS = ("rouge1", "rouge2", "token_acc", "text", "text_pred")  # the text modality's


class Store:
    def __init__(self, run_dir: str | Path, create: bool = True):
        self.dir = Path(run_dir)
        path = self.dir / DB_NAME
        if not create and not path.is_file():
            raise GiabenchError(f"{run_dir}: no {DB_NAME} here; is it a giabench run folder?")
        if self.dir.exists() and not self.dir.is_dir():
            raise GiabenchError(f"{run_dir}: is a file, not a run folder")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "images").mkdir(exist_ok=True)
        except OSError as exc:
            raise GiabenchError(f"{run_dir}: cannot create the run folder ({exc.strerror})") from None
        self.path = path
        try:
            self._create_tables()
        except sqlite3.DatabaseError as exc:
            raise GiabenchError(f"{path}: not a giabench results database ({exc})") from None

    def _create_tables(self) -> None:
        with self._connect() as db:
            cells = ", ".join(f"{k} {v}" for k, v in CELL_COLUMNS.items())
            images = ", ".join(f"{k} {v}" for k, v in IMAGE_COLUMNS.items())
            db.execute(f"CREATE TABLE IF NOT EXISTS cells ({cells})")
            db.execute(f"CREATE TABLE IF NOT EXISTS images ({images}, PRIMARY KEY (cell, image))")
            present = {row[1] for row in db.execute("PRAGMA table_info(cells)")}
            if set(CELL_COLUMNS) - set(ADDED_COLUMNS) <= present:
                for column in set(ADDED_COLUMNS) - present:
                    db.execute(f"ALTER TABLE cells ADD COLUMN {column} {CELL_COLUMNS[column]}")
                present |= set(ADDED_COLUMNS)
            present_images = {row[1] for row in db.execute("PRAGMA table_info(images)")}
            for column in (c for c in ADDED_IMAGE_COLUMNS if c not in present_images):
                db.execute(f"ALTER TABLE images ADD COLUMN {column} {IMAGE_COLUMNS[column]}")
            if not set(CELL_COLUMNS) <= present:
                raise GiabenchError(f"{self.path}: not a giabench results database (columns differ)")

    @contextmanager
    def _connect(self):
        """A connection that commits when the block succeeds, rolls back when it raises, and is always closed."""
        try:
            db = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as exc:
            raise GiabenchError(f"{self.path}: cannot open results database ({exc})") from exc
        try:
            with db:
                yield db
        finally:
            db.close()

    def finished(self) -> set[str]:
        with self._connect() as db:
            return {row[0] for row in db.execute("SELECT cell FROM cells")}

    def numerics(self) -> list[dict]:
        """The distinct numerics settings (device, threads, dtype) of the stored cells; a cell stored before they were
        recorded shows them as None."""
        with self._connect() as db:
            rows = db.execute("SELECT DISTINCT device, threads, dtype FROM cells ORDER BY 1, 2, 3").fetchall()
        return [{"device": d, "threads": t, "dtype": k} for d, t, k in rows]

    def write(self, row: dict, images: list[dict]) -> None:
        """Insert one finished cell and its images atomically."""
        row = {k: _clean(row.get(k)) for k in CELL_COLUMNS}
        try:
            with self._connect() as db:
                db.execute(f"INSERT INTO cells ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                           list(row.values()))
                for image in images:
                    values = [_clean(image.get(k)) if k != "cell" else row["cell"] for k in IMAGE_COLUMNS]
                    db.execute(f"INSERT INTO images ({', '.join(IMAGE_COLUMNS)}) "
                               f"VALUES ({', '.join('?' * len(values))})", values)
        except sqlite3.Error as exc:
            raise GiabenchError(f"{self.path}: cannot store cell {row['cell']} ({exc}); the cells stored before it "
                                "are intact: free space or fix the folder, then rerun to resume") from None

    def forget(self, status: str) -> list[str]:
        """Delete the cells with ``status`` (and their images) so that a rerun computes them again."""
        with self._connect() as db:
            cells = [row[0] for row in db.execute("SELECT cell FROM cells WHERE status = ?", (status,))]
            db.executemany("DELETE FROM images WHERE cell = ?", [(c,) for c in cells])
            db.execute("DELETE FROM cells WHERE status = ?", (status,))
        return cells

    def cells(self) -> pd.DataFrame:
        with self._connect() as db:
            return pd.read_sql_query("SELECT * FROM cells ORDER BY finished_at", db)

    def images(self) -> pd.DataFrame:
        with self._connect() as db:
            return pd.read_sql_query("SELECT * FROM images ORDER BY cell, image", db)


def _clean(value):
    """Mappings and lists become JSON text; floats (inf included) are stored as they are."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


@contextmanager
def exclusive(run_dir: Path):
    """Hold ``run_dir`` for this process (an advisory lock on ``.lock``, released when the process ends, however it
    ends); another process on the same folder is refused with the holder's pid. A folder that cannot take a lock
    file (read-only) is used without one: nothing can be written there anyway."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    try:
        handle = open(run_dir / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 -- held for the whole run
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise GiabenchError(f"{run_dir} is in use by {holder}; wait for it to finish or use another --out") \
                from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()
