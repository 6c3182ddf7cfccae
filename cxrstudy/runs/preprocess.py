"""The tracked body of the ``preprocess`` entry point: tables, split and cache of each hospital
inside an MLflow run, with counts, cache inputs, statistics and the skipped-image list."""

from __future__ import annotations

from cxrstudy.data.dataspec import DataSpec
from cxrstudy.data.preprocess import PreprocessResult, preprocess
from cxrstudy.tracking import keys


def run_preprocess(spec: DataSpec, envs: list[str], *, workers: int | None = None, nested: bool = False,
                       progress: bool = True) -> PreprocessResult:
    """Preprocess inside an MLflow run: parameters, counts, cache inputs, statistics, skipped list."""
    import sys
    import tempfile
    from pathlib import Path

    import mlflow

    from cxrstudy.data.stats import format_stats
    from cxrstudy.tracking import runs as tracking

    with tracking.run(run_name=f"preprocess-{spec.source}-{'-'.join(envs)}", nested=nested,
                      tags={keys.ENTRY_TAG: keys.ENTRY_PREPROCESS, "source": spec.source}):
        tracking.mark_synthetic(spec.is_synthetic)
        tracking.log_params({"envs": ",".join(envs), "image_size": spec.image_size, "data_spec": spec.to_log_dict()},
                            prefix="cfg.")
        result = preprocess(spec, envs, workers=workers, progress=progress)
        for note in result.notes:
            print(note, file=sys.stderr)
        stats, skipped = result.stats, result.skipped
        for (env, split), entry in result.entries.items():
            tracking.log_dataset_input(entry, context=split)
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
            print(f"{int(skipped['n_images'].sum())} images skipped (corrupt, truncated or unreadable); "
                  "counts in skipped_images.csv")
            for (env, split), entry in result.entries.items():
                if entry.manifest["n_skipped"]:  # the files, on this machine only (never logged)
                    print(f"  {env}/{split}: {entry.manifest['n_skipped']} listed in {entry.path / 'skipped.csv'}")
    return result
