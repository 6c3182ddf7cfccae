"""A trained model's test-split predictions, memoised on disk per (run, hospital) under the cache
(``<cache_dir>/predictions/<run id>/<hospital>.csv``), so that every comparison and A/A comparison
that uses a model loads it from the registry and predicts once."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cxrstudy.data.dataspec import DataSpec
from cxrstudy.evaluate.predict import predict_test
from cxrstudy.tracking.registry import load_trained


def cached_predictions(model_uri: str, run_id: str, envs: list[str], data: DataSpec, device: str = "auto",
                       progress: bool = False) -> pd.DataFrame:
    """Test-split predictions of a trained model on ``envs``, memoised on disk per (run, hospital)
    under ``data``'s cache; ``data`` (the spec the model was trained on) says where the images are
    (its run logs no paths)."""
    cache_dir = data.cache_dir
    frames = []
    trained = None
    for env in envs:
        path = Path(cache_dir) / "predictions" / run_id / f"{env}.csv"
        if path.is_file():
            frames.append(pd.read_csv(path, dtype={"subject_id": str, "env": str}))
            continue
        trained = trained or load_trained(model_uri, data_root=data.data_root, roots=data.roots,
                                          cache_dir=data.cache_dir)
        df = predict_test(trained.model, trained.spec, [env], trained.label, trained.threshold, device=device,
                          progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        df.to_csv(tmp, index=False)
        os.replace(tmp, path)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
