"""One tracked probe run: load a model from the registry, embed the test images, fit the probes, log.

A probe run is identified by a key over (training run, hospitals, seed, minimum class size); a
FINISHED run with the same key is reused unless forced, so ``main -P probe=true`` run twice
probes each model once.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from cxrstudy.errors import DataError
from cxrstudy.evaluate.embeddings import extract_embeddings
from cxrstudy.evaluate.probe import MIN_PER_CLASS, probe_metrics, run_probes
from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking
from cxrstudy.train.device import pick_device

PROBE_VERSION = 1


def probe_key(train_run_id: str, envs: list[str], seed: int, min_per_class: int) -> str:
    blob = json.dumps({"run": train_run_id, "envs": list(envs), "seed": seed, "min": min_per_class,
                       "version": PROBE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_probe(model_uri: str, envs: list[str], *, seed: int = 0, min_per_class: int = MIN_PER_CLASS,
              device: str = "auto", data_root: str | None = None, cache_dir: str | None = None, roots: tuple = (),
              parent_run_id: str | None = None, force: bool = False, progress: bool = True) -> dict:
    """Probe the registered model ``model_uri`` on the test images of ``envs``; returns run id, metrics."""
    from cxrstudy.tracking.registry import load_trained

    if len(envs) < 2:
        raise DataError(f"the hospital probe needs at least two hospitals; got {','.join(envs)}")
    trained = load_trained(model_uri, data_root=data_root, cache_dir=cache_dir, roots=roots)
    key = probe_key(trained.run_id, envs, seed, min_per_class)
    if not force:
        done = tracking.find_finished(keys.PROBE_KEY_TAG, key)
        if done is not None:
            if progress:
                print(f"already probed: run {done.info.run_id} ({trained.uri} on {','.join(envs)})", file=sys.stderr)
            return {"run_id": done.info.run_id, "reused": True,
                    "metrics": {k: v for k, v in done.data.metrics.items() if k.startswith("probe/")}}
    train_tags = MlflowClient().get_run(trained.run_id).data.tags
    dev = pick_device(device)
    tags = {keys.ENTRY_TAG: keys.ENTRY_PROBE, keys.PROBE_KEY_TAG: key, "model_uri": trained.uri, "train_run_id": trained.run_id,
            "label": trained.label, "train_envs": ",".join(trained.envs), "probe_envs": ",".join(envs),
            "balance": train_tags.get("balance", ""), "seed": train_tags.get("seed", ""),
            "source": trained.spec.source,
            **({keys.SHORTCUT_STRENGTH_TAG: f"{trained.spec.synthetic.shortcut_strength:g}"}
               if trained.spec.is_synthetic else {})}
    name = f"probe-{trained.uri.split('/', 1)[-1].replace('/', '-')}-on-{'+'.join(envs)}"
    nested = parent_run_id is not None or mlflow.active_run() is not None
    with tracking.run(run_name=name, tags=tags, nested=nested, parent_run_id=parent_run_id) as active:
        tracking.mark_synthetic(trained.spec.is_synthetic)
        entries = {e: trained.spec.entry(e, "test", progress=progress) for e in envs}
        X, frame = extract_embeddings(trained.model, entries, trained.label, dev, progress=progress)
        tracking.log_params({"model_uri": trained.uri, "envs": ",".join(envs), "probe_seed": seed,
                             "min_per_class": min_per_class, "embed_dim": X.shape[1],
                             "n_images": len(frame)}, prefix="cfg.")
        results, skipped = run_probes(X, frame, envs, seed=seed, min_per_class=min_per_class)
        metrics = probe_metrics(results)
        if metrics:
            mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "probe_results.csv"
            results.to_csv(path, index=False)
            mlflow.log_artifact(str(path))
            if skipped:
                (Path(tmp) / "probe_skipped.txt").write_text("\n".join(skipped) + "\n")
                mlflow.log_artifact(str(Path(tmp) / "probe_skipped.txt"))
        if progress:
            print(format_results(trained.uri, results, skipped), file=sys.stderr)
        return {"run_id": active.info.run_id, "reused": False, "metrics": metrics, "results": results,
                "skipped": skipped}


def format_results(uri: str, results, skipped: list[str]) -> str:
    lines = [f"hospital probe of {uri} (accuracy on the held-out 20%; chance = 1/number of hospitals):"]
    for r in results.itertuples():
        lv = "" if r.label_value == "" else f"label={r.label_value}"
        lines.append(f"  {r.task:8s} {r.hospitals:18s} {lv:8s} acc {r.accuracy:.3f}  "
                     f"(train {r.n_train}, test {r.n_test})")
    lines += [f"  skipped: {s}" for s in skipped]
    return "\n".join(lines)
