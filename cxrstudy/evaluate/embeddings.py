"""Image embeddings of a trained model: the features its classification head reads.

``BinaryClassifier.embed`` is the network without its head: for DenseNet-121 the 1024-d vector
after the final ReLU and global average pooling, for the other backbones the equivalent pooled
layer (2048-d ResNet-50, 512-d ResNet-18, 1280-d EfficientNet-B0, 128-d small CNN). It works on
the model exactly as :func:`cxrstudy.tracking.registry.load_model` returns it from the registry.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrstudy.train.device import autocast, place_model
from cxrstudy.train.inference import eval_batches, eval_set


@torch.no_grad()
def extract_embeddings(model: torch.nn.Module, entries: dict, label: str, device: torch.device, *,
                       batch_size: int = 256, progress: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """Embeddings of every image of the given cache entries (hospital -> entry), in cache order.

    Returns ``(X float32 (n, d), frame)`` with ``frame`` columns ``env, subject_id, y_true``.
    Images are read from the memory-mapped cache one batch at a time; only the embeddings are kept.
    """
    if not hasattr(model, "embed"):
        raise TypeError(f"{type(model).__name__} has no embed(); expected a cxrstudy BinaryClassifier")
    es = eval_set(entries, label)
    model = place_model(model, device).eval()
    n = len(es.frame)
    out: np.ndarray | None = None
    bar = tqdm(total=n, desc="embeddings", unit="img", disable=not progress, dynamic_ncols=True)
    for k, x in eval_batches(es, device, batch_size):
        # on the CPU in fp32, exactly the registered model's embeddings (bf16 is the training's choice)
        with autocast(device) if device.type == "cuda" else nullcontext():
            z = model.embed(x).float().cpu().numpy()
        if out is None:
            out = np.empty((n, z.shape[1]), dtype=np.float32)
        out[k:k + len(z)] = z
        bar.update(len(z))
    bar.close()
    if out is None:
        out = np.zeros((0, getattr(model, "embed_dim", 0)), dtype=np.float32)
    return out, es.frame.reset_index(drop=True)
