"""Memory-mapped image cache: one (hospital, split, image size) written once, read many times.

Layout of one entry, ``<cache_dir>/<kind>/<env>/<split>-<size>px-<key>/``:

- ``images.u8``     raw uint8 array of shape (n_slots, size, size), memory-mapped
- ``index.csv``     the harmonised rows that decoded, with ``slot`` (row in images.u8)
- ``skipped.csv``   rows whose image was missing, truncated or corrupt, with the reason
- ``manifest.json`` key, shape, counts; written last

The key is a hash of everything that determines the bytes (source fingerprint, rows, size,
format version), so re-running with the same inputs finds the entry and does nothing.
An entry found damaged (a file truncated, missing or unparsable, as a full disk or a stray
command leaves it) is reported in one line and rebuilt.
A build writes into ``<entry>.partial/`` and records finished chunks in ``done.npy``; a
killed build resumes from there, and only a complete build is renamed into place, so a
reader never sees a half-written entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxrstudy.data.sources.base import Source
from cxrstudy.errors import UsageError

FORMAT_VERSION = 1
CHUNK = 256  # images per task: big enough to amortise pickling, small enough to resume finely


@dataclass
class CacheEntry:
    path: Path
    index: pd.DataFrame  # harmonised rows that decoded, with a ``slot`` column
    manifest: dict

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def place(self) -> str:
        """Where the entry lies inside the cache folder (``<kind>/<env>/<split>-<size>px-<key>``):
        what tracked records name instead of this machine's cache path."""
        return PurePosixPath(*Path(self.path).parts[-3:]).as_posix()

    def images(self) -> np.memmap:
        """The (n_slots, size, size) uint8 array, opened read-only (cheap; pages load on demand)."""
        shape = tuple(self.manifest["shape"])
        if shape[0] == 0:
            return np.zeros(shape, dtype=np.uint8)
        return np.memmap(self.path / "images.u8", dtype=np.uint8, mode="r", shape=shape)

    def skipped(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "skipped.csv", dtype=str, keep_default_na=False)


def check_cache_dir(cache_dir) -> Path:
    """Make sure ``cache_dir`` is (or can become) a writable folder, before any work: one
    :class:`UsageError` line naming it otherwise (a file, a read-only folder, no permission)."""
    path = Path(cache_dir).expanduser()
    hint = "; pass -P cache_dir=<a writable folder> (or set CXRSTUDY_CACHE)"
    if path.exists() and not path.is_dir():
        raise UsageError(f"cache_dir={cache_dir} is a file, not a folder{hint}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except NotADirectoryError:
        raise UsageError(f"cache_dir={cache_dir}: a part of the path is a file, not a folder{hint}") from None
    except OSError as e:
        raise UsageError(f"cache_dir={cache_dir} is not writable ({e.strerror or e}){hint}") from None
    return path


def free_disk(path) -> int:
    """Bytes an unprivileged process may still write on the file system of ``path`` (its nearest
    existing folder)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def entry_bytes(n_images: int, size: int) -> int:
    """The size of one cache entry's ``images.u8``: one byte per pixel."""
    return int(n_images) * int(size) * int(size)


def human_bytes(n: float) -> str:
    """``20890720927744`` -> ``19.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop returns at TiB


def check_free_disk(cache_dir, need: int, what: str) -> None:
    """:class:`UsageError` naming both figures when ``need`` bytes do not fit under ``cache_dir``."""
    free = free_disk(cache_dir)
    if need > free:
        raise UsageError(f"{what} needs ~{human_bytes(need)} of disk under cache_dir={cache_dir}, "
                         f"{human_bytes(free)} free; free some space, pass -P cache_dir=<a larger disk> "
                         "or lower image_size")


def built_entries(cache_dir, source: Source, size: int) -> list[Path]:
    """The finished entries of ``source``'s hospital at ``size`` px, whatever their rows."""
    return sorted(Path(cache_dir, source.kind, source.env).glob(f"*-{int(size)}px-*/manifest.json"))


def cache_key(source: Source, rows: pd.DataFrame, split: str, size: int) -> str:
    h = hashlib.sha256()
    h.update(f"v{FORMAT_VERSION}|{source.kind}|{source.env}|{split}|{size}|{source.fingerprint()}|".encode())
    h.update(pd.util.hash_pandas_object(rows[["path", "subject_id"]], index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def entry_dir(cache_dir, source: Source, split: str, size: int, key: str) -> Path:
    return Path(cache_dir) / source.kind / source.env / f"{split}-{size}px-{key}"


def open_entry(path: Path) -> CacheEntry:
    manifest = json.loads((path / "manifest.json").read_text())
    index = pd.read_csv(path / "index.csv", dtype={"subject_id": str, "study_id": str, "path": str,
                                                    "view": str, "sex": str, "age_bin": str},
                        keep_default_na=False)
    return CacheEntry(path=path, index=index, manifest=manifest)


def find_entry(cache_dir, source: Source, rows: pd.DataFrame, split: str, size: int) -> CacheEntry | None:
    """The finished, intact entry for these inputs, or None."""
    key = cache_key(source, rows, split, size)
    entry, _ = checked_entry(entry_dir(cache_dir, source, split, size, key), key)
    return entry


def checked_entry(path: Path, key: str) -> tuple[CacheEntry | None, str | None]:
    """``(entry, None)`` for an intact finished entry ``key`` at ``path``; ``(None, why)`` for a damaged
    one (why in a few words); ``(None, None)`` where there is none. Checks what a reader relies on:
    the manifest parses and describes this entry, ``images.u8`` has exactly the manifest's shape in
    bytes, ``index.csv`` parses into the manifest's number of images with distinct slots inside it."""
    if not path.is_dir():
        return None, None
    if not (path / "manifest.json").is_file():
        return None, "manifest.json is missing"
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        shape = [int(n) for n in manifest["shape"]]
        n_images = int(manifest["n_images"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"manifest.json is unreadable ({type(e).__name__})"
    if manifest.get("key") != key or len(shape) != 3 or min(shape) < 0:
        return None, "manifest.json does not describe this entry"
    expected = shape[0] * shape[1] * shape[2]
    images = path / "images.u8"
    if not images.is_file():
        return None, "images.u8 is missing"
    if images.stat().st_size != expected:
        return None, f"images.u8 has {images.stat().st_size} bytes, expected {expected}"
    try:
        entry = open_entry(path)
        slots = pd.to_numeric(entry.index["slot"], errors="raise")
        entry.index["path"], entry.index["subject_id"]
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        return None, f"index.csv is unreadable ({type(e).__name__})"
    if len(slots) != n_images or not slots.between(0, shape[0] - 1).all() or slots.duplicated().any():
        return None, f"index.csv does not match the manifest ({len(slots)} rows for {n_images} images)"
    return entry, None


# ---- worker side -------------------------------------------------------------------------
_W: dict = {}


def _init_worker(source: Source, images_path: str, shape: tuple) -> None:
    _W["source"] = source
    _W["images"] = np.memmap(images_path, dtype=np.uint8, mode="r+", shape=shape)
    _W["size"] = shape[1]


def _decode_chunk(chunk_id: int, start: int, paths: list[str]) -> tuple[int, list[tuple[int, str]]]:
    """Decode ``paths`` into slots start.. of the memmap; return failures as (slot, reason)."""
    src, images, size = _W["source"], _W["images"], _W["size"]
    failures = []
    for i, p in enumerate(paths):
        try:
            images[start + i] = src.read_image(p, size)
        except Exception as e:  # corrupt, truncated or missing: counted, never fatal
            images[start + i] = 0
            failures.append((start + i, f"{type(e).__name__}: {e}"[:300]))
    images.flush()
    return chunk_id, failures


# ---- builder -----------------------------------------------------------------------------
def _pool_context():
    # fork starts workers in milliseconds and shares the source's table without pickling it;
    # the workers only decode images and write to the memmap.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def build_entry(
    source: Source,
    rows: pd.DataFrame,
    split: str,
    size: int,
    cache_dir,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> CacheEntry:
    """Return the cache entry for ``rows`` (one hospital's split), building it if needed."""
    rows = rows.reset_index(drop=True)
    key = cache_key(source, rows, split, size)
    final = entry_dir(cache_dir, source, split, size, key)
    entry, _ = checked_entry(final, key)
    if entry is not None:
        return entry
    final.parent.mkdir(parents=True, exist_ok=True)
    # One builder per entry at a time (parallel grid workers may ask for the same one).
    with open(final.with_name(final.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entry, damaged = checked_entry(final, key)
        if entry is not None:
            return entry
        if damaged:
            print(f"warning: the cache entry {final} is damaged ({damaged}): rebuilding it", file=sys.stderr,
                  flush=True)
            shutil.rmtree(final)
        _build(source, rows, split, size, key, final, workers=workers, progress=progress)
    return open_entry(final)


def _build(source, rows, split, size, key, final: Path, *, workers, progress) -> None:
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    shape = (n, size, size)
    n_chunks = (n + CHUNK - 1) // CHUNK
    images_path = partial / "images.u8"
    done_path = partial / "done.npy"
    fail_path = partial / "failures.jsonl"
    expected_bytes = n * size * size
    fresh = not images_path.exists() or images_path.stat().st_size != expected_bytes or not done_path.exists()
    if fresh:
        with open(images_path, "wb") as f:
            f.truncate(expected_bytes)
        done = np.zeros(n_chunks, dtype=bool)
        np.save(done_path, done)
        fail_path.write_text("")
    done = np.load(done_path)
    todo = [c for c in range(n_chunks) if not done[c]]
    paths = rows["path"].tolist()
    failures: dict[int, str] = {}
    for line in fail_path.read_text().splitlines():
        rec = json.loads(line)
        failures[int(rec["slot"])] = rec["reason"]

    def mark_done(chunk_id, chunk_failures):
        done[chunk_id] = True
        with open(fail_path, "a") as f:
            for slot, reason in chunk_failures:
                failures[slot] = reason
                f.write(json.dumps({"slot": slot, "reason": reason}) + "\n")
        tmp = partial / "done.tmp.npy"
        np.save(tmp, done)
        os.replace(tmp, done_path)

    if todo:
        desc = f"cache {source.env}/{split} {size}px"
        bar = tqdm(total=n, initial=n - sum(min(CHUNK, n - c * CHUNK) for c in todo), desc=desc,
                   unit="img", disable=not progress, dynamic_ncols=True)
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        if len(todo) <= 2:  # starting processes costs more than it saves
            workers = 1
        if workers == 1:
            _init_worker(source, str(images_path), shape)
            try:
                for c in todo:
                    cid, fl = _decode_chunk(c, c * CHUNK, paths[c * CHUNK:(c + 1) * CHUNK])
                    mark_done(cid, fl)
                    bar.update(min(CHUNK, n - c * CHUNK))
            finally:
                _W.clear()
        else:
            with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker,
                                     initargs=(source, str(images_path), shape)) as pool:
                futures = [pool.submit(_decode_chunk, c, c * CHUNK, paths[c * CHUNK:(c + 1) * CHUNK]) for c in todo]
                for fut in as_completed(futures):
                    cid, fl = fut.result()
                    mark_done(cid, fl)
                    bar.update(min(CHUNK, n - cid * CHUNK))
        bar.close()

    ok = np.ones(n, dtype=bool)
    ok[list(failures)] = False
    index = rows.loc[ok].copy()
    index.insert(0, "slot", np.flatnonzero(ok))
    index.to_csv(partial / "index.csv", index=False)
    skipped = rows.loc[~ok, ["subject_id", "path"]].copy()
    skipped.insert(0, "env", source.env)
    skipped["reason"] = [failures[i] for i in np.flatnonzero(~ok)]
    skipped.to_csv(partial / "skipped.csv", index=False)
    manifest = {
        "key": key, "format_version": FORMAT_VERSION, "env": source.env, "kind": source.kind,
        "split": split, "size": size, "shape": list(shape), "n_rows": n,
        "n_images": int(ok.sum()), "n_skipped": int((~ok).sum()),
        "source_fingerprint": source.fingerprint(),
    }
    (partial / "manifest.tmp").write_text(json.dumps(manifest, indent=1))
    os.replace(partial / "manifest.tmp", partial / "manifest.json")
    for tmp in ("done.npy", "failures.jsonl"):
        (partial / tmp).unlink(missing_ok=True)
    if final.exists():  # left by an older crashed rename: replace it
        shutil.rmtree(final)
    os.replace(partial, final)
