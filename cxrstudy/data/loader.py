"""Training batches drawn from the memory-mapped cache, an equal share from each hospital.

Batch ``t`` is a pure function of (seed, t): each hospital's examples are visited in epochs,
each epoch a fresh permutation drawn from ``(seed, hospital, epoch)``, and every batch takes
``batch_size // k`` examples from each of the k hospitals (the remainder going to the first
ones), whatever their sizes (64 + 64 for two hospitals at batch 128). So a resumed run sees
exactly the batches it would have seen, with no sampler state to save, and a background thread
can prepare the next batches while the model trains.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class HospitalPool:
    """One hospital's training examples: the cache array and the chosen slots and labels."""

    env: str
    images: np.ndarray  # (n_slots, S, S) uint8 memmap
    slots: np.ndarray  # rows of ``images`` to train on (after balancing)
    labels: np.ndarray  # label of each chosen slot, 0/1


def shares(batch_size: int, k: int) -> list[int]:
    base, extra = divmod(batch_size, k)
    if base == 0:
        raise ValueError(f"batch size {batch_size} is smaller than the number of hospitals ({k})")
    return [base + (1 if i < extra else 0) for i in range(k)]


class EqualShareBatches:
    def __init__(self, pools: list[HospitalPool], batch_size: int, seed: int):
        for p in pools:
            if len(p.slots) == 0:
                raise ValueError(f"{p.env}: no training examples")
        self.pools = pools
        self.shares = shares(batch_size, len(pools))
        self.seed = int(seed)
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, i: int, epoch: int) -> np.ndarray:
        key = (i, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4 * len(self.pools):
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, i, epoch])
            self._perm_cache[key] = rng.permutation(len(self.pools[i].slots))
        return self._perm_cache[key]

    def positions(self, i: int, step: int) -> np.ndarray:
        """Indices into pool i's slots used by batch ``step``."""
        n, share = len(self.pools[i].slots), self.shares[i]
        start = step * share
        out = np.empty(share, dtype=np.int64)
        filled = 0
        while filled < share:
            epoch, offset = divmod(start + filled, n)
            take = min(share - filled, n - offset)
            out[filled:filled + take] = self._perm(i, epoch)[offset:offset + take]
            filled += take
        return out

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images uint8 (B, S, S), labels (B,), hospital index (B,)) for batch ``step``."""
        imgs, ys, envs = [], [], []
        for i, pool in enumerate(self.pools):
            pos = self.positions(i, step)
            slots = pool.slots[pos]
            order = np.argsort(slots, kind="stable")  # sequential reads from the memmap
            imgs.append(pool.images[slots[order]])
            ys.append(pool.labels[pos][order])
            envs.append(np.full(len(pos), i, dtype=np.int64))
        return np.concatenate(imgs), np.concatenate(ys), np.concatenate(envs)

    def offsets(self) -> np.ndarray:
        """Where each pool's examples start in the run's example numbering (pools concatenated)."""
        return np.concatenate([[0], np.cumsum([len(p.slots) for p in self.pools])[:-1]]).astype(np.int64)

    def rows(self, step: int) -> np.ndarray:
        """The example number (pools concatenated, in slot order) of each image of batch ``step``,
        in the order :meth:`batch` returns them; per-example weights (JTT) are looked up by it."""
        out, offsets = [], self.offsets()
        for i, pool in enumerate(self.pools):
            pos = self.positions(i, step)
            order = np.argsort(pool.slots[pos], kind="stable")
            out.append(offsets[i] + pos[order])
        return np.concatenate(out)


def to_tensor(images: np.ndarray, pin: bool = False) -> torch.Tensor:
    """uint8 (B, S, S) -> uint8 tensor (B, 1, S, S), pinned for fast host-to-GPU copies if asked."""
    t = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    return t.pin_memory() if pin else t


class Prefetcher:
    """Prepare batches ``start, start+1, ...`` in a background thread (NumPy releases the GIL
    while copying from the memmap), keeping ``depth`` ready."""

    def __init__(self, batches: EqualShareBatches, start: int, *, depth: int = 4, pin: bool = False):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._batches, self._pin = batches, pin
        self._thread = threading.Thread(target=self._work, args=(start,), daemon=True)
        self._thread.start()

    def _work(self, step: int) -> None:
        try:
            while not self._stop.is_set():
                x, y, e = self._batches.batch(step)
                item = (step, to_tensor(x, self._pin), torch.from_numpy(y.astype(np.int64)), torch.from_numpy(e))
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as exc:  # surface loader errors in the training thread
            self._q.put(exc)

    def next(self):
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        try:  # free a slot so that a worker blocked on a full queue sees the stop at once
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)
