"""Preprocessing: harmonised tables, the subject-wise split and the image cache, per hospital."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .cache import CacheEntry
from .dataspec import DataSpec
from .errors import DataError
from .splits import SPLITS
from .stats import dataset_stats


@dataclass
class PreprocessResult:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    entries: dict[tuple[str, str], CacheEntry] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dropped_missing: dict[str, int] = field(default_factory=dict)

    @property
    def stats(self) -> pd.DataFrame:
        return dataset_stats(pd.concat(self.tables.values(), ignore_index=True))

    @property
    def skipped(self) -> pd.DataFrame:
        frames = [e.skipped().assign(split=split) for (_, split), e in self.entries.items()]
        cols = ["env", "split", "subject_id", "path", "reason"]
        return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def preprocess(spec: DataSpec, envs: list[str], *, workers: int | None = None, progress: bool = True,
               build_cache: bool = True) -> PreprocessResult:
    """Build every hospital's table, split and (when the source has images) cache entries.

    In metadata mode mimic is skipped with a note (MIMIC-CXR is not shipped in torchxrayvision).
    """
    result = PreprocessResult()
    for env in envs:
        try:
            source = spec.open(env)
        except DataError as e:
            if spec.source == "metadata" and env == "mimic":
                result.notes.append(f"mimic skipped: {e}")
                continue
            raise
        result.tables[env] = spec.table(env)
        result.dropped_missing[env] = source.dropped_missing
        result.notes.extend(source.notes)
        if build_cache and source.has_images:
            for split in SPLITS:
                result.entries[(env, split)] = spec.entry(env, split, workers=workers, progress=progress)
    if not result.tables:
        raise DataError(f"no hospital could be read from source={spec.source} (asked for {', '.join(envs)})")
    return result


def tracked_preprocess(spec: DataSpec, envs: list[str], *, workers: int | None = None, nested: bool = False,
                       progress: bool = True) -> PreprocessResult:
    """Preprocess inside an MLflow run: parameters, counts, cache inputs, statistics, skipped list."""
    import sys
    import tempfile
    from pathlib import Path

    import mlflow

    from . import tracking
    from .dataspec import log_entry_input
    from .stats import format_stats

    with tracking.run(run_name=f"preprocess-{spec.source}-{'-'.join(envs)}", nested=nested,
                      tags={"cxrstudy.entry": "preprocess", "source": spec.source}):
        tracking.mark_synthetic(spec.is_synthetic)
        tracking.log_params({"envs": ",".join(envs), "image_size": spec.image_size, "data_spec": spec.to_dict()},
                            prefix="cfg.")
        result = preprocess(spec, envs, workers=workers, progress=progress)
        for note in result.notes:
            print(note, file=sys.stderr)
        stats, skipped = result.stats, result.skipped
        for (env, split), entry in result.entries.items():
            log_entry_input(entry, context=split)
            mlflow.log_metrics({f"count/{env}/{split}/images": entry.manifest["n_images"],
                                f"count/{env}/{split}/skipped": entry.manifest["n_skipped"]})
        for env, table in result.tables.items():
            mlflow.log_metrics({f"count/{env}/rows": len(table), f"count/{env}/subjects": table["subject_id"].nunique(),
                                f"count/{env}/dropped_missing": result.dropped_missing.get(env, 0)})
        with tempfile.TemporaryDirectory() as tmp:
            stats.to_csv(Path(tmp) / "dataset_stats.csv", index=False)
            skipped.to_csv(Path(tmp) / "skipped_images.csv", index=False)
            (Path(tmp) / "notes.txt").write_text("\n".join(result.notes) + "\n")
            mlflow.log_artifacts(tmp)
        print(f"\nDataset statistics (source={spec.source}, prevalence in %):\n{format_stats(stats)}")
        if result.entries:
            print(f"{len(skipped)} images skipped (corrupt, truncated or unreadable); list in skipped_images.csv")
    return result
