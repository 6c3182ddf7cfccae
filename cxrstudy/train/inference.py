"""Running a model over a set of images, free of MLflow: what training's validation and
evaluation's predictions and embeddings share.

An :class:`EvalSet` is one or more hospitals' split in a fixed order (images read from the
cache's memmaps one batch at a time, labels and identities in a frame); :func:`predict_scores`
and :func:`validate` run a model over it; :func:`pool_outputs` runs one over the training pools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrstudy.data.loader import HospitalPool
from cxrstudy.train.device import autocast, prepare_input
from cxrstudy.train.models import BinaryClassifier
from cxrstudy.train.scoring import as_labels, auroc_score, group_accuracy, predict, select_threshold, worst_group

__all__ = ["EvalSet", "eval_set", "eval_batches", "predict_scores", "validate", "pool_outputs"]


@dataclass
class EvalSet:
    """Images of one or more hospitals' split, in a fixed order, with labels and identities."""

    images: list  # per hospital: (memmap, slots)
    frame: pd.DataFrame  # env, subject_id, y_true (row order = concatenated slots)


def eval_set(entries: dict, label: str, keep: dict | None = None) -> EvalSet:
    """An EvalSet over the given cache entries (hospital -> entry), optionally a subset of rows."""
    images, frames = [], []
    for e, entry in entries.items():
        rows = entry.index if keep is None else entry.index.iloc[keep[e]]
        images.append((entry.images(), rows["slot"].to_numpy()))
        frames.append(pd.DataFrame({"env": e, "subject_id": rows["subject_id"].astype(str).to_numpy(),
                                    "y_true": rows[label].to_numpy().astype(np.int64)}))
    return EvalSet(images=images, frame=pd.concat(frames, ignore_index=True))


def eval_batches(es: EvalSet, device: torch.device, batch_size: int = 256):
    """``(k, x)`` for each batch of the eval set in frame order: ``k`` the batch's first row,
    ``x`` the model input on ``device``. Images are read from the memmap one batch at a time."""
    k = 0
    for images, slots in es.images:
        for i in range(0, len(slots), batch_size):
            s = slots[i:i + batch_size]
            yield k, prepare_input(torch.from_numpy(np.ascontiguousarray(images[s])).unsqueeze(1), device)
            k += len(s)


@torch.no_grad()
def predict_scores(model: torch.nn.Module, es: EvalSet, device: torch.device, batch_size: int = 256,
                   with_loss: bool = False):
    """P(y=1) for every image of the eval set (and the mean cross-entropy if asked)."""
    model.eval()
    scores, losses = [], []
    ys = torch.tensor(es.frame["y_true"].to_numpy(), dtype=torch.long)
    for k, x in eval_batches(es, device, batch_size):
        with autocast(device):
            logits = model(x).float()
        if with_loss:
            losses.append(F.cross_entropy(logits, ys[k:k + len(x)].to(device), reduction="sum").item())
        scores.append(torch.softmax(logits, 1)[:, 1].cpu())
    out = torch.cat(scores).numpy().astype(np.float64) if scores else np.zeros(0)
    return (out, sum(losses) / max(len(ys), 1)) if with_loss else out


def validate(model, es: EvalSet, device) -> dict:
    """Validation metrics of ``model`` on ``es``: the mean loss, the threshold chosen on it
    (docs/PROTOCOL.md's grid and rule) with its macro-F1, the AUROC, the worst-group accuracy
    and the share of images predicted positive at that threshold."""
    scores, loss = predict_scores(model, es, device, with_loss=True)
    y = es.frame["y_true"].to_numpy()
    thr, f1 = select_threshold(y, scores)
    groups = group_accuracy(es.frame["env"].astype(str).to_numpy(), as_labels(y), predict(scores, thr))
    return {"loss": loss, "macro_f1": f1, "auroc": auroc_score(y, scores), "wga": worst_group(groups)[0],
            "threshold": thr, "pred_pos_rate": float(np.mean(scores >= thr)) if len(scores) else float("nan")}


@torch.no_grad()
def pool_outputs(model: BinaryClassifier, pools: list[HospitalPool], device: torch.device, *,
                 rows: np.ndarray | None = None, what: str = "logits", batch_size: int = 256) -> torch.Tensor:
    """The model's logits (or embeddings) for training examples ``rows`` (default: all), without
    augmentation, in eval mode, in the order of ``rows``."""
    model.eval()
    sizes = [len(p.slots) for p in pools]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows = np.arange(sum(sizes)) if rows is None else np.asarray(rows)
    out = []
    for k in range(0, len(rows), batch_size):
        r = rows[k:k + batch_size]
        pool_of = np.searchsorted(offsets, r, side="right") - 1
        imgs = np.stack([pools[i].images[pools[i].slots[j - offsets[i]]] for i, j in zip(pool_of, r)])
        x = prepare_input(torch.from_numpy(imgs).unsqueeze(1), device)
        with autocast(device):
            o = model.embed(x) if what == "embeddings" else model(x)
        out.append(o.float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
