"""The predictor behind `advise`: a ridge regression of a setting's measured change in WGA on its
cheap signals, and how it is scored (docs/PROTOCOL.md "Advise: predicting the harm before training").

Transparent on purpose: a handful of standardised features, one coefficient each (reported), an
intercept, and the spread of the held-out residuals. The predicted change ``mu`` and that spread
give the probability that adding the hospital lowers WGA, ``P(delta < 0) = Phi(-mu / sd)``, and the
verdict: *hurts* when that probability is at least ``HURTS_AT``, *helps* when at most ``1 - HURTS_AT``,
else *no clear effect*.

It is fitted only on settings whose studies were run (their comparison runs), and scored by
cross-validation that leaves out every setting of one hospital pair at a time, so no setting is
scored by a model that saw it, nor its mirror image (base and added swapped) or its other label.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from cxrstudy.train.scoring import auroc_score

#: the features the full predictor reads (derived from cxrstudy.evaluate.signals by :func:`features`)
FEATURES = ("prevalence_gap", "abs_prevalence_gap", "log_size_ratio", "min_group_share", "domain_excess",
            "domain_x_gap", "domain_x_abs_gap", "proxy_delta", "net_delta")
#: what it reads when advise runs from the label tables alone (no images)
TABLE_FEATURES = ("prevalence_gap", "abs_prevalence_gap", "log_size_ratio", "min_group_share")
#: the domain-classifier baseline: the image signal alone
DOMAIN_FEATURES = ("domain_excess",)
#: the study proxies alone (not baselines of the issue: they show what the rest of the predictor adds)
PROXY_FEATURES = ("proxy_delta",)
NET_FEATURES = ("net_delta",)
#: the ridge penalty on standardised features
ALPHA = 1.0
#: P(delta < 0) from which the verdict is "hurts" (and at most 1 - this: "helps")
HURTS_AT = 0.7
HURTS, NO_CLEAR, HELPS = "hurts", "no clear effect", "helps"
VERDICTS = (HURTS, NO_CLEAR, HELPS)


def features(signals: pd.DataFrame) -> pd.DataFrame:
    """The predictor's features from signal columns (``prevalence_gap``, ``log_size_ratio``,
    ``min_group_share`` and, when the images were read, ``domain_auc``, ``proxy_delta`` and ``net_delta``)."""
    out = pd.DataFrame(index=signals.index)
    gap = signals["prevalence_gap"].astype(float)
    out["prevalence_gap"] = gap
    out["abs_prevalence_gap"] = gap.abs()
    out["log_size_ratio"] = signals["log_size_ratio"].astype(float)
    out["min_group_share"] = signals["min_group_share"].astype(float)
    if "domain_auc" in signals:
        excess = (signals["domain_auc"].astype(float) - 0.5).clip(lower=0.0)
        out["domain_excess"] = excess
        out["domain_x_gap"] = excess * gap
        out["domain_x_abs_gap"] = excess * gap.abs()
    for proxy in PROXY_FEATURES + NET_FEATURES:
        if proxy in signals:
            out[proxy] = signals[proxy].astype(float)
    return out


@dataclass
class Predictor:
    features: tuple
    mean: list
    scale: list
    coef: list
    intercept: float
    residual_sd: float
    alpha: float
    n_fit: int

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The predicted change in WGA (pair minus single) of each row."""
        Z = (X[list(self.features)].to_numpy(float) - np.asarray(self.mean)) / np.asarray(self.scale)
        return Z @ np.asarray(self.coef) + self.intercept

    def p_hurt(self, X: pd.DataFrame) -> np.ndarray:
        """P(delta < 0) of each row: the predicted change against the held-out residual spread."""
        return prob_below_zero(self.predict(X), self.residual_sd)

    def coefficients(self) -> pd.DataFrame:
        """One row per feature: its coefficient per standard deviation, and the intercept."""
        rows = [{"term": f, "coefficient": c, "feature_mean": m, "feature_sd": s}
                for f, c, m, s in zip(self.features, self.coef, self.mean, self.scale)]
        rows.append({"term": "intercept", "coefficient": self.intercept, "feature_mean": np.nan, "feature_sd": np.nan})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {**asdict(self), "features": list(self.features)}

    @classmethod
    def from_dict(cls, d: dict) -> "Predictor":
        return cls(**{**d, "features": tuple(d["features"])})


def prob_below_zero(mu, sd: float) -> np.ndarray:
    sd = max(float(sd), 1e-6)
    return np.array([0.5 * math.erfc(m / (sd * math.sqrt(2))) for m in np.atleast_1d(mu)])


def verdict(p_hurt) -> list[str]:
    return [HURTS if p >= HURTS_AT else HELPS if p <= 1 - HURTS_AT else NO_CLEAR for p in np.atleast_1d(p_hurt)]


def _ridge(X: pd.DataFrame, y: np.ndarray, names, alpha: float):
    A = X[list(names)].to_numpy(float)
    mean = A.mean(0)
    scale = A.std(0)
    scale[scale < 1e-12] = 1.0  # a constant feature gets coefficient ~0 through the penalty
    Z = (A - mean) / scale
    yc = y - y.mean()
    coef = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ yc)
    return mean, scale, coef, float(y.mean())


def fit(X: pd.DataFrame, delta, groups, names=FEATURES, alpha: float = ALPHA, *, held_out=None) -> Predictor:
    """Fit on every row; the residual spread is that of the leave-one-group-out predictions (so the
    probabilities are calibrated for settings the fit has not seen). ``held_out``: those predictions'
    ``mu`` when the caller has them already (:func:`cross_validated` with the same arguments)."""
    y = np.asarray(delta, dtype=float)
    mean, scale, coef, icpt = _ridge(X, y, names, alpha)
    if held_out is None:
        held_out = cross_validated(X, y, groups, names, alpha)["mu"]
    resid = y - held_out
    sd = float(np.sqrt(np.mean(resid ** 2))) if len(resid) else float("nan")
    return Predictor(features=tuple(names), mean=mean.tolist(), scale=scale.tolist(), coef=coef.tolist(),
                     intercept=icpt, residual_sd=sd, alpha=alpha, n_fit=len(y))


def cross_validated(X: pd.DataFrame, delta, groups, names=FEATURES, alpha: float = ALPHA) -> pd.DataFrame:
    """Leave-one-group-out predictions: ``mu`` (predicted change) and ``p_hurt`` for each row from a
    fit on the rows of every other group (a group = one hospital pair). A group left alone (one
    group in all) gets NaN."""
    y = np.asarray(delta, dtype=float)
    groups = np.asarray(groups)
    mu = np.full(len(y), np.nan)
    for g in pd.unique(groups):
        test = groups == g
        if test.all():
            continue
        mean, scale, coef, icpt = _ridge(X[~test], y[~test], names, alpha)
        Z = (X.loc[test, list(names)].to_numpy(float) - mean) / scale
        mu[test] = Z @ coef + icpt
    resid = y - mu
    ok = ~np.isnan(resid)
    sd = float(np.sqrt(np.mean(resid[ok] ** 2))) if ok.any() else float("nan")
    return pd.DataFrame({"mu": mu, "p_hurt": prob_below_zero(mu, sd) if ok.any() else np.nan}, index=X.index)


def measured_verdict(ci_low, ci_high) -> list[str]:
    """The study's verdict from its seed-aware 95% CI: hurts (whole CI < 0), helps (> 0), else none."""
    return [HURTS if h < 0 else HELPS if lo > 0 else NO_CLEAR for lo, h in zip(ci_low, ci_high)]


def score(measured: list[str], predicted_mu, predicted_p, delta) -> dict:
    """How well predictions match a study: ``sign_accuracy`` (of the settings the study calls
    significant, the share whose predicted change has the measured sign), ``verdict_accuracy`` (the
    three-way verdict over every setting), ``hurt_auroc`` (P(hurt) ranking the significantly hurt
    settings above the rest), ``lower_auroc`` (the same for the settings whose mean change is below 0,
significant or not), ``delta_corr`` (Pearson r with the measured change), and the counts."""
    measured = np.asarray(measured)
    mu = np.asarray(predicted_mu, float)
    p = np.asarray(predicted_p, float)
    sig = measured != NO_CLEAR
    sign_ok = np.where(measured == HURTS, mu < 0, mu > 0)
    d = np.asarray(delta, float)
    corr = float(np.corrcoef(mu, d)[0, 1]) if len(d) > 2 and np.std(mu) > 0 and np.std(d) > 0 else float("nan")
    return {"n_settings": int(len(measured)), "n_significant": int(sig.sum()), "n_lower": int((d < 0).sum()),
            "n_significantly_hurt": int((measured == HURTS).sum()),
            "sign_accuracy": float(sign_ok[sig].mean()) if sig.any() else float("nan"),
            "verdict_accuracy": float((np.asarray(verdict(p)) == measured).mean()) if len(measured) else float("nan"),
            "hurt_auroc": auroc_score(measured == HURTS, p),
            "lower_auroc": auroc_score(d < 0, p),
            "delta_corr": corr}


def confusion(measured: list[str], predicted: list[str]) -> pd.DataFrame:
    """Rows: the study's verdict; columns: the predicted verdict; cells: settings."""
    t = pd.crosstab(pd.Categorical(measured, VERDICTS), pd.Categorical(predicted, VERDICTS), dropna=False)
    t.index.name, t.columns.name = "measured", "predicted"
    return t


def baselines(X: pd.DataFrame, delta, groups) -> dict[str, pd.DataFrame]:
    """The predictions of the baselines, as ``mu``/``p_hurt`` frames: *always helps*; the
    *prevalence rule* (hurts when the added hospital has the lower train prevalence); and, when the
    images were read, the *domain classifier alone* (the same ridge on the image signal only,
    cross-validated the same way) and, for reference, each *study proxy alone* (likewise)."""
    gap = X["prevalence_gap"].to_numpy(float)
    out = {"always_helps": pd.DataFrame({"mu": np.full(len(X), 1.0), "p_hurt": np.zeros(len(X))}, index=X.index),
           "prevalence_rule": pd.DataFrame({"mu": np.where(gap < 0, -1.0, 1.0),
                                            "p_hurt": np.where(gap < 0, 1.0, 0.0)}, index=X.index)}
    if all(f in X for f in DOMAIN_FEATURES):
        out["domain_only"] = cross_validated(X, delta, groups, DOMAIN_FEATURES)
    if all(f in X for f in PROXY_FEATURES):
        out["proxy_only"] = cross_validated(X, delta, groups, PROXY_FEATURES)
    if all(f in X for f in NET_FEATURES):
        out["net_only"] = cross_validated(X, delta, groups, NET_FEATURES)
    return out
