"""The one definition of a group: a (hospital, label) pair, in the spirit of WILDS's ``Grouper``.

A run's training hospitals are numbered ``0..k-1`` in the order of its ``envs`` (a batch's
``env``); a binary label ``y`` is 0 or 1. Group ``g`` of hospital ``h`` and label ``y`` is
``h * 2 + y``, so a run with ``k`` hospitals has ``2 * k`` groups: the losses (GroupDRO,
reweighting, DFR's balancing) work on these ids. Reports name a group by its hospital's name
and label instead: ``group_name("nih", 1) == "nih/y=1"``, read back by :func:`parse_group_name`.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["N_LABELS", "group_ids", "n_groups", "hospital_and_label", "group_counts_of", "train_groups",
           "group_name", "parse_group_name"]

#: values of the binary label: a hospital has this many groups
N_LABELS = 2


def group_ids(hospital, y):
    """The group id ``hospital * 2 + y`` of each example (a tensor for tensors, else an int64 array)."""
    if isinstance(hospital, torch.Tensor):
        return hospital.long() * N_LABELS + torch.as_tensor(y).long()
    return np.asarray(hospital, dtype=np.int64) * N_LABELS + np.asarray(y, dtype=np.int64)


def n_groups(n_hospitals: int) -> int:
    """How many groups a run with ``n_hospitals`` training hospitals has."""
    return N_LABELS * int(n_hospitals)


def hospital_and_label(group):
    """``(hospital index, label)`` of group ids: the inverse of :func:`group_ids`."""
    return divmod(group, N_LABELS)


def group_counts_of(group, n: int) -> torch.Tensor:
    """How many examples fall in each group ``0..n-1`` (float tensor)."""
    g = torch.as_tensor(np.asarray(group), dtype=torch.long).reshape(-1)
    if len(g) and (int(g.min()) < 0 or int(g.max()) >= n):
        raise ValueError(f"group ids must lie in 0..{n - 1}")
    return torch.bincount(g, minlength=n).to(torch.float32)


def train_groups(pools) -> tuple[np.ndarray, np.ndarray]:
    """Labels and group ids of every training example, the pools (one per hospital, in order:
    ``cxrstudy.data.loader.HospitalPool``) concatenated in slot order (the numbering of
    ``EqualShareBatches.rows``)."""
    y = np.concatenate([p.labels for p in pools]).astype(np.int64)
    hospital = np.concatenate([np.full(len(p.slots), i, dtype=np.int64) for i, p in enumerate(pools)])
    return y, group_ids(hospital, y)


def group_name(hospital: str, y: int) -> str:
    """The spelling of a group in reports, e.g. ``group_name("nih", 1) == "nih/y=1"``."""
    return f"{hospital}/y={int(y)}"


def parse_group_name(name: str) -> tuple[str, int]:
    """``("nih", 1)`` from ``"nih/y=1"``: the inverse of :func:`group_name`."""
    hospital, sep, value = str(name).rpartition("/y=")
    if not sep or value not in ("0", "1"):
        raise ValueError(f"group name {name!r}; expected <hospital>/y=0 or <hospital>/y=1")
    return hospital, int(value)
