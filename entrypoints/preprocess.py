"""preprocess: harmonised tables, the subject-wise split, dataset statistics and the image cache.

    mlflow run . --env-manager local -e preprocess -P source=metadata -P envs=cxp,nih,pad
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy import cli  # noqa: E402
from cxrstudy.dataspec import DATA_PARAMS  # noqa: E402

PARAMS = {
    "envs": "all",
    "preset": "auto",
    "image_size": "",
    "workers": "0",
    **DATA_PARAMS,
}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="preprocess", doc=__doc__)

    def body():
        import tempfile

        import mlflow

        from cxrstudy import tracking
        from cxrstudy.dataspec import log_entry_input, spec_from_params
        from cxrstudy.hospitals import parse_envs
        from cxrstudy.params import as_int, optional
        from cxrstudy.preprocess import preprocess
        from cxrstudy.presets import resolve_preset
        from cxrstudy.stats import format_stats

        envs = parse_envs(raw["envs"])
        _, preset = resolve_preset(raw["preset"], verbose=False)
        size = as_int("image_size", optional(raw["image_size"]) or preset["image_size"], lo=8, hi=1024)
        workers = as_int("workers", raw["workers"], lo=0) or None
        spec = spec_from_params(raw, size)
        tracking.setup()
        with tracking.run(run_name=f"preprocess-{spec.source}-{'-'.join(envs)}", tags={"cxrstudy.entry": "preprocess"}):
            tracking.mark_synthetic(spec.is_synthetic)
            tracking.log_params({"envs": ",".join(envs), "image_size": size, **spec.to_dict()}, prefix="cfg.")
            result = preprocess(spec, envs, workers=workers)
            for note in result.notes:
                print(note, file=sys.stderr)
            stats = result.stats
            skipped = result.skipped
            for (env, split), entry in result.entries.items():
                log_entry_input(entry, context=f"{split}")
                mlflow.log_metrics({f"count/{env}/{split}/images": entry.manifest["n_images"],
                                    f"count/{env}/{split}/skipped": entry.manifest["n_skipped"]})
            for env, table in result.tables.items():
                mlflow.log_metrics({f"count/{env}/rows": len(table),
                                    f"count/{env}/subjects": table["subject_id"].nunique(),
                                    f"count/{env}/dropped_missing": result.dropped_missing.get(env, 0)})
            with tempfile.TemporaryDirectory() as tmp:
                stats.to_csv(Path(tmp) / "dataset_stats.csv", index=False)
                skipped.to_csv(Path(tmp) / "skipped_images.csv", index=False)
                (Path(tmp) / "notes.txt").write_text("\n".join(result.notes) + "\n")
                mlflow.log_artifacts(tmp)
            print(f"\nDataset statistics (source={spec.source}, prevalence in %):")
            print(format_stats(stats))
            print(f"\n{len(skipped)} images skipped (corrupt, truncated or unreadable); list in skipped_images.csv")

    cli.run(body)


if __name__ == "__main__":
    main()
