"""The network proxy of a study (`advise`'s ``net_delta``, docs/PROTOCOL.md "Advise").

The linear proxy (:mod:`cxrstudy.evaluate.signals`) reads fixed image features, so it cannot see
what a network learns to read off the pixels, and at moderate shortcut strengths that is where it
missed (the network leans on the hospital's look, the linear model does not). This proxy is the
study in miniature: short runs of the study's own small network (``stridecnn``, at the image size
advise reads), :data:`NET_SEEDS` per training arm (one hospital, or two), each with one output per
label of :data:`cxrstudy.labels.LABELS` in place of one network per label and seed, a fixed
:data:`NET_STEPS` in place of early stopping, and no augmentation. Each draws equal-share batches
(each hospital half of a pair's batch, as the study's training does) and, under hospital-label
balancing, down-weights each label's negatives to the arm's highest prevalence (what undersampling
does, in expectation). The head covers every label whichever are asked, so a setting's value does
not depend on which other settings are advised on.

Everything runs on one intra-op thread (:func:`cxrstudy.train.device.reproducible`): the same scores
on one machine whatever else runs beside it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrstudy.labels import LABELS
from cxrstudy.train.balancing import BALANCE_HOSPITAL_LABEL, negative_weight, prevalence
from cxrstudy.train.device import place_model, prepare_input, reproducible
from cxrstudy.train.models import StrideCNN

#: optimiser steps of one arm's network (the study's networks keep their best checkpoint at a median
#: ~750; on the validation study one network of 150 steps ranked the significantly hurt settings
#: better than one of 300 or 600, docs/PROTOCOL.md "Advise")
NET_STEPS = 150
#: networks per arm, each with its own seed, whose WGAs are averaged (one network's WGA is as noisy
#: as one seed of the study: averaging two raised the correlation with the measured change from
#: 0.61 to 0.69 on the validation study)
NET_SEEDS = 2
#: images per step, split equally between the arm's hospitals (the ``cpu`` preset's batch)
NET_BATCH = 64
#: Adam's learning rate (the ``cpu`` preset's)
NET_LR = 1e-3
#: images scored per forward pass
_SCORE_BATCH = 1024

_CPU = torch.device("cpu")


def _label_weights(ys: list[np.ndarray], balance: str) -> list[np.ndarray]:
    """Per hospital, a weight per (image, label): 1, except that under hospital-label balancing a
    negative of label ``j`` in a hospital of prevalence ``p`` weighs ``p(1-t) / (t(1-p))``, ``t``
    the arm's highest prevalence of ``j`` (undersampling's expectation, as in the linear proxy)."""
    out = [np.ones(y.shape, dtype=np.float32) for y in ys]
    if balance != BALANCE_HOSPITAL_LABEL:
        return out
    for j in range(ys[0].shape[1]):
        t = max(prevalence(y[:, j]) for y in ys)
        for y, w in zip(ys, out):
            w[y[:, j] == 0, j] = negative_weight(prevalence(y[:, j]), t)
    return out


class _Net(nn.Module):
    """StrideCNN with one logit per label."""

    def __init__(self, n_out: int):
        super().__init__()
        self.trunk = StrideCNN()
        self.head = nn.Linear(self.trunk.out_dim, n_out)

    def forward(self, x):
        return self.head(self.trunk(x))


def net_fit(train: list[tuple[np.ndarray, np.ndarray]], balance: str, *, seed: int = 0,
            steps: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """One arm's network: ``train`` holds, per training hospital, its uint8 images ``(n, S, S)`` and
    its labels ``(n, len(LABELS))``; returns a function from uint8 images to scores ``(n, len(LABELS))``.
    ``steps``: :data:`NET_STEPS` unless given."""
    steps = NET_STEPS if steps is None else steps
    ys = [y for _, y in train]
    weights = _label_weights(ys, balance)
    per = max(1, NET_BATCH // len(train))
    rng = np.random.default_rng([seed, len(train)])
    with reproducible(_CPU):
        torch.manual_seed(seed)
        model = place_model(_Net(ys[0].shape[1]), _CPU)
        opt = torch.optim.Adam(model.parameters(), lr=NET_LR)
        model.train()
        for _ in range(steps):
            rows = [np.sort(rng.integers(0, len(y), per)) for y in ys]
            images = np.concatenate([im[r] for (im, _), r in zip(train, rows)])
            x = prepare_input(torch.from_numpy(images[:, None]), _CPU)
            y = torch.from_numpy(np.concatenate([t[r] for t, r in zip(ys, rows)]).astype(np.float32))
            w = torch.from_numpy(np.concatenate([w[r] for w, r in zip(weights, rows)]))
            loss = (F.binary_cross_entropy_with_logits(model(x), y, reduction="none") * w).sum() / w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()

    def score(images: np.ndarray) -> np.ndarray:
        out = []
        with reproducible(_CPU), torch.no_grad():
            for i in range(0, len(images), _SCORE_BATCH):
                chunk = np.ascontiguousarray(images[i:i + _SCORE_BATCH])
                x = prepare_input(torch.from_numpy(chunk[:, None]), _CPU)
                out.append(torch.sigmoid(model(x)).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(LABELS)), dtype=np.float32)

    return score
