"""`advise`: which added hospital will hurt which label, predicted before training
(docs/PROTOCOL.md "Advise: predicting the harm before training").

:func:`run_advise` takes the cheap signals of the settings to advise on and, when the store holds
finished studies, those studies' settings (their signals joined with the measured change in WGA and
its seed-aware CI). It fits the predictor on the studies (or, with none, uses the predictor fitted on
the studies named in ``advise_default.json``), predicts, recommends, and, when there are studies,
scores the predictor and the baselines by leave-one-hospital-pair-out cross-validation. It writes
``advice.csv``, ``advice_validation.csv``, ``advice_confusion.csv``, ``advice_coefficients.csv``,
``predictor.json``, ``advice.png`` and ``advice.md``, and returns them with ``advise/...`` metrics.
Pure pandas/matplotlib: the entry point computes the signals and does the MLflow I/O.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrstudy.errors import DataError  # noqa: E402
from cxrstudy.evaluate.signals import DOMAIN_SIGNAL, NET_SIGNAL, PROXY_SIGNAL, TABLE_SIGNALS  # noqa: E402
from cxrstudy.labels import label_key  # noqa: E402
from cxrstudy.train.balancing import BALANCE_HOSPITAL_LABEL, BALANCE_NONE  # noqa: E402

from .advise_model import (FEATURES, HURTS, TABLE_FEATURES, Predictor, baselines, confusion,  # noqa: E402
                           cross_validated, features, fit, measured_verdict, score, verdict)

#: the predictor used when the store holds no finished study to learn from
DEFAULT_PREDICTOR = Path(__file__).with_name("advise_default.json")
#: a store's studies are learned from when they hold at least this many settings over two hospital pairs
MIN_FIT_SETTINGS = 8
POOL, POOL_BALANCED, KEEP_APART = "pool", "pool with hospital-label balancing", "keep apart"
SETTING = ["base", "added", "label", "balance"]
MODELS = ("advise", "always_helps", "prevalence_rule", "domain_only", "proxy_only", "net_only")


def pair_of(frame: pd.DataFrame) -> list[str]:
    """The unordered hospital pair of each setting (cross-validation leaves out one pair at a time)."""
    return ["+".join(sorted((b, a))) for b, a in zip(frame["base"], frame["added"])]


def load_default(names) -> tuple[Predictor, str]:
    if not DEFAULT_PREDICTOR.is_file():
        raise DataError("advise has no finished study to learn from in this experiment and no shipped predictor; "
                        "run a study first (mlflow run . -e main)")
    d = json.loads(DEFAULT_PREDICTOR.read_text())
    pred = Predictor.from_dict(d["predictor"])
    missing = [f for f in pred.features if f not in names]
    if missing:  # e.g. the shipped predictor reads the images and advise runs from the tables alone
        pred = Predictor.from_dict(d["table_predictor"])
    return pred, f"the shipped predictor (fitted on {d['fitted_on']})"


def recommend(advice: pd.DataFrame) -> pd.Series:
    """Per setting: pool when pooling as is is not predicted to hurt; else pool with hospital-label
    balancing when that is predicted not to hurt; else keep the hospitals apart."""
    verdicts = {(r.base, r.added, r.label, r.balance): r.verdict for r in advice.itertuples()}
    out = []
    for r in advice.itertuples():
        plain = verdicts.get((r.base, r.added, r.label, BALANCE_NONE), r.verdict)
        balanced = verdicts.get((r.base, r.added, r.label, BALANCE_HOSPITAL_LABEL))
        out.append(POOL if plain != HURTS else POOL_BALANCED if balanced not in (None, HURTS) else KEEP_APART)
    return pd.Series(out, index=advice.index)


def run_advise(signals: pd.DataFrame, history: pd.DataFrame | None, out_dir, *, images: bool,
               studies: str = "", grid_seconds: float = float("nan"), history_signal_seconds: float = float("nan"),
               figures: bool = True) -> dict:
    """Advice for ``signals`` (one row per setting, :data:`cxrstudy.evaluate.signals.SIGNAL_COLUMNS`);
    ``history``: the studied settings' signals with ``delta_mean``, ``delta_ci_low``,
    ``delta_ci_high`` (None or empty: no study). ``grid_seconds``: the training time of the studied
    grid, and ``history_signal_seconds`` what its signals cost, for the cost ratio."""
    out = Path(out_dir)
    names = FEATURES if images else TABLE_FEATURES
    files, metrics = {}, {}
    history = history if history is not None else pd.DataFrame()
    learn = len(history) >= MIN_FIT_SETTINGS and len(set(pair_of(history))) >= 2
    if learn:  # the studied settings' features, pairs and held-out predictions serve the fit and the scores
        Xh, groups, delta = features(history), pair_of(history), history["delta_mean"]
        held_out = cross_validated(Xh, delta, groups, names)
        predictor = fit(Xh, delta, groups, names, held_out=held_out["mu"])
        fitted_on = f"{len(history)} studied settings of {studies or 'this experiment'}"
    else:
        predictor, fitted_on = load_default(names)
    X = features(signals)
    advice = signals[SETTING].copy()
    advice["predicted_delta"] = predictor.predict(X)
    advice["p_hurt"] = predictor.p_hurt(X)
    advice["verdict"] = verdict(advice["p_hurt"])
    advice["recommendation"] = recommend(advice)
    for col in TABLE_SIGNALS + ((DOMAIN_SIGNAL, PROXY_SIGNAL, NET_SIGNAL) if images else ()):
        advice[col] = signals[col].to_numpy()
    files["advice.csv"] = out / "advice.csv"
    advice.to_csv(files["advice.csv"], index=False)
    coefs = predictor.coefficients()
    files["advice_coefficients.csv"] = out / "advice_coefficients.csv"
    coefs.to_csv(files["advice_coefficients.csv"], index=False)
    files["predictor.json"] = out / "predictor.json"
    saved = {"fitted_on": fitted_on, "predictor": predictor.to_dict()}
    if learn:  # the table-only predictor too, so this file can serve as a shipped predictor (advise_default.json)
        saved["table_predictor"] = (predictor if names == TABLE_FEATURES
                                    else fit(Xh, delta, groups, TABLE_FEATURES)).to_dict()
    files["predictor.json"].write_text(json.dumps(saved, indent=1))
    for r in advice.itertuples():
        metrics[f"advise/{r.base}/{r.added}/{label_key(r.label)}/{r.balance}/p_hurt"] = float(r.p_hurt)
    metrics["advise/n_settings"] = float(len(advice))
    metrics["advise/n_predicted_hurt"] = float((advice["verdict"] == HURTS).sum())
    metrics["advise/signal_seconds"] = float(signals["table_seconds"].sum() + signals["image_seconds"].sum())

    validation, scores = None, {}
    if learn:
        measured = measured_verdict(history["delta_ci_low"], history["delta_ci_high"])
        preds = {"advise": held_out, **baselines(Xh, delta, groups)}
        for model, p in preds.items():
            scores[model] = score(measured, p["mu"], p["p_hurt"], delta)
            for k, v in scores[model].items():
                metrics[f"advise/validation/{model}/{k}"] = float(v)
        validation = history[SETTING + ["shortcut_strength", "delta_mean", "delta_ci_low", "delta_ci_high"]].copy()
        validation["measured_verdict"] = measured
        validation["predicted_delta"] = preds["advise"]["mu"].to_numpy()
        validation["p_hurt"] = preds["advise"]["p_hurt"].to_numpy()
        validation["predicted_verdict"] = verdict(validation["p_hurt"])
        files["advice_validation.csv"] = out / "advice_validation.csv"
        validation.to_csv(files["advice_validation.csv"], index=False)
        conf = confusion(measured, list(validation["predicted_verdict"]))
        files["advice_confusion.csv"] = out / "advice_confusion.csv"
        conf.to_csv(files["advice_confusion.csv"])
        cost = metrics["advise/signal_seconds"] if np.isnan(history_signal_seconds) else history_signal_seconds
        if grid_seconds and np.isfinite(grid_seconds) and grid_seconds > 0:
            metrics["advise/cost/grid_seconds"] = float(grid_seconds)
            metrics["advise/cost/signal_seconds"] = float(cost)
            metrics["advise/cost/fraction"] = float(cost / grid_seconds)
    if figures:
        files["advice.png"] = _figure(advice, validation, out / "advice.png")
    lines = report_lines(advice, coefs, fitted_on, images, scores, validation, metrics)
    files["advice.md"] = out / "advice.md"
    files["advice.md"].write_text("\n".join(lines) + "\n")
    return {"advice": advice, "validation": validation, "scores": scores, "predictor": predictor,
            "fitted_on": fitted_on, "metrics": metrics, "files": files, "report": lines}


def _figure(advice: pd.DataFrame, validation: pd.DataFrame | None, path: Path) -> Path:
    """Left: P(adding lowers WGA) per setting, coloured by verdict. Right (when validated): the
    held-out predicted change against the measured one, with its seed-aware CI."""
    ncols = 2 if validation is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 0.28 * len(advice) + 1.8), squeeze=False)
    ax = axes[0, 0]
    names = [f"{r.base}+{r.added} {r.label} ({r.balance})" for r in advice.itertuples()]
    colors = ["#c0392b" if v == HURTS else "#27ae60" if v == "helps" else "#95a5a6" for v in advice["verdict"]]
    ax.barh(range(len(advice)), advice["p_hurt"], color=colors)
    ax.set_yticks(range(len(advice)), names, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0.5, color="k", lw=0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(adding the hospital lowers WGA)")
    ax.set_title("advise: predicted before training")
    if validation is not None:
        ax = axes[0, 1]
        v = validation
        err = np.vstack([v["delta_mean"] - v["delta_ci_low"], v["delta_ci_high"] - v["delta_mean"]])
        ax.errorbar(v["predicted_delta"], v["delta_mean"], yerr=err, fmt="o", ms=3, lw=0.6, color="#34495e")
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("predicted change in WGA (held-out hospital pair)")
        ax.set_ylabel("measured change (seed-aware 95% CI)")
        ax.set_title("validation against the studied settings")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_lines(advice, coefs, fitted_on, images, scores, validation, metrics) -> list[str]:
    read = ("label tables and images (domain classifier, linear and network study proxies)" if images
            else "label tables only (no images)")
    lines = ["## Advise: the harm predicted before training", "",
             f"Signals: {read}; "
             f"predictor fitted on {fitted_on}.", "",
             "| base | added | label | balance | P(hurt) | predicted change | verdict | recommendation |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.base} | {r.added} | {r.label} | {r.balance} | {r.p_hurt:.2f} | {r.predicted_delta:+.3f} | "
              f"{r.verdict} | {r.recommendation} |" for r in advice.itertuples()]
    lines += ["", "Coefficients (per standard deviation of each feature): "
              + ", ".join(f"{r.term} {r.coefficient:+.3f}" for r in coefs.itertuples()), ""]
    if validation is not None:
        lines += ["Validation (leave-one-hospital-pair-out; the study's verdicts from its seed-aware CIs; "
                  f"{scores['advise']['n_settings']} settings, {scores['advise']['n_significant']} significant):", "",
                  "| predictor | sign accuracy (significant settings) | AUROC, significantly hurt | AUROC, lowered (any) "
                  "| verdict accuracy | r |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {m} | {s['sign_accuracy']:.2f} | {s['hurt_auroc']:.2f} | {s['lower_auroc']:.2f} | "
                  f"{s['verdict_accuracy']:.2f} | {s['delta_corr']:.2f} |" for m, s in scores.items()]
        lines += ["", f"The study called {scores['advise']['n_significantly_hurt']} settings significantly hurt "
                  f"and lowered WGA in {scores['advise']['n_lower']} (mean change below 0); an AUROC needs both kinds "
                  "(nan otherwise)."]
        if "advise/cost/fraction" in metrics:
            lines += ["", f"Cost: the signals took {metrics['advise/cost/signal_seconds']:.1f} s against "
                      f"{metrics['advise/cost/grid_seconds']:.0f} s of training for the studied grid "
                      f"({100 * metrics['advise/cost/fraction']:.2f}%)."]
    lines += ["", "Where not to trust it: settings unlike the studies it was fitted on (other hospitals, labels, "
              "image sizes or shortcut strengths), and any setting whose P(hurt) is near 0.5."]
    return lines
