"""Log N fake comparison runs (the tags and metrics of ``cxrstudy.runs.study.run_compare``) and time
the analysis over them.

    .venv/bin/python benchmarks/make_fake_comparisons.py --n 5000
    .venv/bin/python benchmarks/make_fake_comparisons.py --n 5000 --tracking_uri sqlite:////tmp/b.db --experiment fake

The runs cycle through every setting (12 ordered hospital pairs x 9 labels x 3 balance modes x
the sources), so a setting gets several re-runs and the analysis must pick the newest. Every
fake run is tagged ``cxrstudy.fake=true`` (the report warns about them) and the script refuses
to write into an experiment that holds any run without that tag, so a real study cannot be
polluted. Without ``--tracking_uri`` the runs go to a fresh temporary SQLite store.

On a SQLAlchemy (SQLite/PostgreSQL/MySQL) store the runs are written with a few bulk INSERTs
(``method="bulk"``, ~1 s for 5,000 runs) into the same tables ``MlflowClient`` writes; on other
stores (an HTTP server) with ``MlflowClient.create_run`` + ``log_batch`` + ``set_terminated``
(``method="client"``, ~17 ms a run on local SQLite).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


from cxrstudy.tracking import keys  # noqa: E402
from cxrstudy.train.balancing import BALANCE_MODES
from cxrstudy.hospitals import HOSPITALS  # noqa: E402
from cxrstudy.labels import LABELS  # noqa: E402

SEEDS = (0, 1, 2)


def fake_settings(sources=("synthetic",), balances=BALANCE_MODES, labels=LABELS, hospitals=HOSPITALS) -> list[tuple]:
    return [(a, b, lab, bal, src) for src in sources for bal in balances for lab in labels
            for a, b in itertools.permutations(hospitals, 2)]


#: What ``mlflow run . -e compare`` adds to a comparison run besides the study's tags and metrics
#: (``realistic=True``): the raw ``-P`` parameters, the resolved ``cfg.`` ones, MLflow's own tags.
_P_PARAMS = {"seeds": "0,1,2", "n_bootstrap": "1000", "preset": "auto", "backbone": "densenet121",
             "pretrained": "auto", "image_size": "", "lr": "1e-5", "weight_decay": "0", "batch_size": "128",
             "max_steps": "20000", "eval_every": "500", "patience": "10", "device": "auto", "force": "false",
             "parent_run_id": "", "data_root": "", "roots": "", "cache_dir": "", "synthetic_patients": "1500",
             "shortcut_strength": "1.0", "synthetic_seed": "0"}
_MLFLOW_TAGS = {"mlflow.user": "fake", "mlflow.source.name": "file:///work/main", "mlflow.source.type": "PROJECT",
                "mlflow.project.entryPoint": "compare", "mlflow.project.env": "local",
                "mlflow.project.backend": "local", "mlflow.source.git.commit": "0" * 40,
                "mlflow.gitRepoURL": "", "mlflow.source.git.repoURL": ""}


def fake_records(n: int, seed: int = 0, sources=("synthetic",), balances=BALANCE_MODES, start_ms: int | None = None,
                 realistic: bool = False) -> list[dict]:
    """``n`` fake comparison results: tags, metrics, start/end time. Run ``i`` is of setting
    ``i % n_settings`` and starts 1 s after run ``i-1``, so the last run of a setting is its newest.
    ``realistic``: also the ~30 params and ~10 tags that ``mlflow run . -e compare`` adds."""
    rng = np.random.default_rng(seed)
    settings = fake_settings(sources, balances)
    true_delta = rng.normal(-0.005, 0.04, len(settings)) + np.array([0.015 if s[3] == "hospital_label" else 0.0
                                                                     for s in settings])
    models = sorted({(b, a, lab, src) for b, a, lab, _, src in settings})  # the single model ignores balance
    single_of = dict(zip(models, rng.uniform(0.35, 0.8, len(models))))
    true_single = np.array([single_of[(b, a, lab, src)] for b, a, lab, _, src in settings])
    start_ms = int(time.time() * 1000) - n * 1000 if start_ms is None else start_ms
    out = []
    for i in range(n):
        k = i % len(settings)
        base, added, label, balance, source = settings[k]
        single = np.clip(true_single[k] + rng.normal(0, 0.01, len(SEEDS)), 0, 1)
        pair = np.clip(single + true_delta[k] + rng.normal(0, 0.02, len(SEEDS)), 0, 1)
        delta = pair - single
        mean = float(delta.mean())
        half = float(rng.uniform(0.01, 0.06))
        metrics = {"compare/wga_single": float(single.mean()), "compare/wga_pair": float(pair.mean()),
                   "compare/delta_wga": mean, "compare/delta_ci_low": mean - half,
                   "compare/delta_ci_high": mean + half, "compare/hurt": float(mean < 0),
                   "compare/n_seeds": float(len(SEEDS))}
        for s, ws, wp in zip(SEEDS, single, pair):
            metrics[f"compare/seed{s}/delta_wga"] = float(wp - ws)
            metrics[f"compare/seed{s}/wga_single"] = float(ws)
            metrics[f"compare/seed{s}/wga_pair"] = float(wp)
        key = f"fake{seed}-{k:04d}"
        tags = {keys.ENTRY_TAG: keys.ENTRY_COMPARE, "base": base, "added": added, "label": label, "balance": balance,
                "source": source, "seeds": ",".join(map(str, SEEDS)),
                keys.SYNTHETIC_TAG: str(source == "synthetic").lower(), keys.COMPARE_KEY_TAG: key,
                keys.FAKE_TAG: "true",
                "mlflow.runName": f"compare-{base}+{added}-{label.lower().replace(' ', '_')}-{balance}"}
        params = {}
        if realistic:
            tags.update(_MLFLOW_TAGS)
            tags["single_runs"] = ",".join(f"{k:04d}{s}" + "0" * 27 for s in SEEDS)
            tags["pair_runs"] = ",".join(f"{k:04d}{s}" + "1" * 27 for s in SEEDS)
            params = {"base": base, "added": added, "label": label, "balance": balance, "source": source,
                      **_P_PARAMS, "cfg.seeds": "0,1,2", "cfg.n_bootstrap": "1000",
                      "cfg.single_config_hashes": ",".join("a" * 16 for _ in SEEDS),
                      "cfg.pair_config_hashes": ",".join("b" * 16 for _ in SEEDS)}
        t = start_ms + 1000 * i
        out.append({"tags": tags, "metrics": metrics, "params": params, "start_time": t, "end_time": t + 500,
                    "setting": (base, added, label, balance, source)})
    return out


def _experiment(client, name: str) -> str:
    from cxrstudy.errors import DataError

    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name)
    real = client.search_runs([exp.experiment_id], f"tags.`{keys.FAKE_TAG}` IS NULL", max_results=1)
    if real:
        raise DataError(f"experiment {name!r} holds runs that are not fake (e.g. {real[0].info.run_id}); "
                        "make_fake_comparisons only writes into a new experiment or one with fake runs only")
    return exp.experiment_id


def _write_client(client, eid: str, records: list[dict]) -> list[str]:
    from mlflow.entities import Metric, Param

    ids = []
    for r in records:
        run = client.create_run(eid, start_time=r["start_time"], tags=r["tags"])
        rid = run.info.run_id
        client.log_batch(rid, metrics=[Metric(k, v, r["start_time"], 0) for k, v in r["metrics"].items()],
                         params=[Param(k, v) for k, v in r["params"].items()])
        client.set_terminated(rid, "FINISHED", end_time=r["end_time"])
        ids.append(rid)
    return ids


def _write_bulk(store, eid: str, records: list[dict]) -> list[str]:
    """The rows ``create_run`` + ``log_batch`` + ``set_terminated`` would write, in bulk INSERTs."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    exp = store.get_experiment(eid)
    runs, tags, metrics, params = [], [], [], []
    ids = []
    for r in records:
        rid = uuid.uuid4().hex
        ids.append(rid)
        runs.append({"run_uuid": rid, "name": r["tags"]["mlflow.runName"], "source_type": "UNKNOWN",
                     "source_name": "", "entry_point_name": "", "user_id": "fake", "status": "FINISHED",
                     "start_time": r["start_time"], "end_time": r["end_time"], "deleted_time": None,
                     "source_version": "", "lifecycle_stage": "active",
                     "artifact_uri": f"{exp.artifact_location.rstrip('/')}/{rid}/artifacts",
                     "experiment_id": int(eid)})
        tags += [{"key": k, "value": v, "run_uuid": rid} for k, v in r["tags"].items()]
        params += [{"key": k, "value": v, "run_uuid": rid} for k, v in r["params"].items()]
        metrics += [{"key": k, "value": v, "timestamp": r["start_time"], "step": 0, "is_nan": False,
                     "run_uuid": rid} for k, v in r["metrics"].items()]
    with store.ManagedSessionMaker() as session:
        session.execute(SqlRun.__table__.insert(), runs)
        session.execute(SqlTag.__table__.insert(), tags)
        session.execute(SqlMetric.__table__.insert(), metrics)
        session.execute(SqlLatestMetric.__table__.insert(), metrics)
        if params:
            session.execute(SqlParam.__table__.insert(), params)
    return ids


def make_fake_comparisons(n: int = 5000, experiment_name: str = "cxrstudy-fake-comparisons", seed: int = 0, *,
                          tracking_uri: str | None = None, sources=("synthetic",), balances=BALANCE_MODES,
                          method: str = "auto", realistic: bool = False) -> dict:
    """Log ``n`` fake FINISHED comparison runs into ``experiment_name`` (created when missing) of
    ``tracking_uri`` (None = the current one). ``method``: ``auto`` (bulk on SQLAlchemy stores,
    else client), ``bulk`` or ``client``. ``realistic``: give every run the ~30 params and ~10 extra
    tags of a run made by ``mlflow run . -e compare`` (they make the query ~2x slower).

    Returns ``{"experiment_id", "run_ids", "n", "seconds", "method", "expected"}``; ``expected``
    holds, per setting, the newest run's ``delta_mean`` / CI (what the analysis must report).
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient

    t0 = time.perf_counter()
    client = MlflowClient(tracking_uri)
    eid = _experiment(client, experiment_name)
    records = fake_records(n, seed, sources, balances, realistic=realistic)
    store = client._tracking_client.store
    if method == "auto":
        method = "bulk" if isinstance(store, SqlAlchemyStore) else "client"
    ids = _write_bulk(store, eid, records) if method == "bulk" else _write_client(client, eid, records)
    expected = {}
    for rid, r in zip(ids, records):  # later records are newer
        m = r["metrics"]
        expected[r["setting"]] = {"run_id": rid, "delta_mean": m["compare/delta_wga"],
                                  "delta_ci_low": m["compare/delta_ci_low"],
                                  "delta_ci_high": m["compare/delta_ci_high"], "wga_single": m["compare/wga_single"],
                                  "wga_pair": m["compare/wga_pair"]}
    exp_df = pd.DataFrame([{"base": k[0], "added": k[1], "label": k[2], "balance": k[3], "source": k[4], **v}
                           for k, v in expected.items()])
    return {"experiment_id": eid, "run_ids": ids, "n": n, "seconds": time.perf_counter() - t0, "method": method,
            "expected": exp_df}


@contextmanager
def _using_tracking_uri(uri: str):
    """Point MLflow's fluent API at ``uri`` for a while, then back (a caller may have its own run open)."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def time_analysis(n_runs: int = 5000, seed: int = 0) -> float:
    """Seconds ``analysis.run_analysis`` takes over ``n_runs`` fake comparison runs in a fresh
    temporary SQLite store (query, summary, figures, report; the store is already open, as it is
    in the analyze entry point by the time it queries). Leaves the caller's MLflow state alone."""
    return benchmark(n_runs, seed=seed)["analysis_seconds"]


def benchmark(n: int = 5000, *, tracking_uri: str | None = None, experiment_name: str = "cxrstudy-fake-comparisons",
              seed: int = 0, method: str = "auto", out_dir=None, sources=("synthetic",), realistic: bool = False,
              entrypoint: bool = False) -> dict:
    """Make the fake runs, then time ``analysis.run_analysis`` on them (in this process, the
    store already open), and with ``entrypoint`` also ``entrypoints/analyze.py`` in a fresh
    process (imports, store start-up, query, figures, report and logging: everything but
    ``mlflow run``'s own overhead). Returns the timings in seconds."""
    import os
    import subprocess

    import mlflow

    from analysis import run_analysis

    if tracking_uri is None:
        tracking_uri = f"sqlite:///{Path(tempfile.mkdtemp(prefix='cxrstudy-bench-')) / 'mlflow.db'}"
    mlflow.tracking.MlflowClient(tracking_uri).search_experiments(max_results=1)  # create / migrate the store
    made = make_fake_comparisons(n, experiment_name, seed, tracking_uri=tracking_uri, method=method, sources=sources,
                                 realistic=realistic)
    out_dir = out_dir or tempfile.mkdtemp(prefix="cxrstudy-bench-analysis-")
    with _using_tracking_uri(tracking_uri):
        t = time.perf_counter()
        res = run_analysis([made["experiment_id"]], out_dir=out_dir, log=False, verbose=False)
    out = {"tracking_uri": tracking_uri, "experiment_id": made["experiment_id"], "n_runs": n,
           "method": made["method"], "make_seconds": made["seconds"],
           "analysis_seconds": time.perf_counter() - t, "timings": res["timings"],
           "n_settings": len(res["settings"]), "report": str(res["report"])}
    if entrypoint:
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(var, None)
        script = Path(__file__).resolve().parents[1] / "entrypoints" / "analyze.py"
        t = time.perf_counter()
        subprocess.run([sys.executable, str(script), "--experiment", made["experiment_id"]], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        out["entrypoint_seconds"] = time.perf_counter() - t
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--tracking_uri", default=None, help="default: a fresh temporary SQLite store")
    ap.add_argument("--experiment", default="cxrstudy-fake-comparisons")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=("auto", "bulk", "client"), default="auto")
    ap.add_argument("--sources", default="synthetic", help="comma list of source tags, e.g. synthetic,real")
    ap.add_argument("--out_dir", default=None)
    ap.add_argument("--realistic", action="store_true",
                    help="also the ~30 params and extra tags that `mlflow run . -e compare` logs per run")
    ap.add_argument("--entrypoint", action="store_true",
                    help="also time `python entrypoints/analyze.py` end to end in a fresh process")
    a = ap.parse_args(argv)
    res = benchmark(a.n, tracking_uri=a.tracking_uri, experiment_name=a.experiment, seed=a.seed, method=a.method,
                    out_dir=a.out_dir, sources=tuple(s for s in a.sources.split(",") if s), realistic=a.realistic,
                    entrypoint=a.entrypoint)
    print(f"store: {res['tracking_uri']} (experiment {res['experiment_id']})")
    print(f"made {res['n_runs']} fake comparison runs ({res['method']}{', realistic' if a.realistic else ''}) "
          f"in {res['make_seconds']:.2f} s")
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in res["timings"].items())
    print(f"run_analysis over {res['n_runs']} runs ({res['n_settings']} settings): {res['analysis_seconds']:.2f} s "
          f"({parts})")
    if "entrypoint_seconds" in res:
        print(f"entrypoints/analyze.py in a fresh process (all included but `mlflow run`): "
              f"{res['entrypoint_seconds']:.2f} s")
    print(f"report: {res['report']}")


if __name__ == "__main__":
    main()
