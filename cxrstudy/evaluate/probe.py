"""Hospital-identifiability probes on a model's embeddings (docs/PROTOCOL.md "Hospital identifiability probe").

At a fixed label value (all negatives, or all positives), a linear probe (StandardScaler +
LinearSVC) is trained to tell hospitals apart from the embeddings of their test images: for every
pair of hospitals and for all of them at once. Classes are balanced by undersampling each to the
smallest, and the balanced set is split 80/20 (stratified) into probe-train and probe-test; the
accuracy on the 20% is reported, averaged over ``REPEATS`` random 80/20 splits of the balanced set
(one split of a few hundred images moves the estimate by several points). Two controls: the same probe on two random halves of one
hospital (should be at chance, 0.5), and a probe for the label itself within each hospital.

Every function here is pure NumPy/scikit-learn on ``(X, frame)``: ``X`` the embeddings, ``frame``
with columns ``env`` and ``y_true`` (as :func:`cxrstudy.evaluate.embeddings.extract_embeddings` returns).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd

from cxrstudy.hospitals import HOSPITALS

PROBE_COLUMNS = ["task", "hospitals", "label_value", "n_train", "n_test", "accuracy"]
#: a class needs this many examples (after balancing) for a probe to be fitted
MIN_PER_CLASS = 20
TEST_FRACTION = 0.2
#: random 80/20 splits per probe; the reported accuracy is their mean
REPEATS = 5


def balance_classes(groups: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Undersample each index array to the size of the smallest, without replacement (sorted)."""
    n = min(len(g) for g in groups)
    return [np.sort(rng.choice(g, size=n, replace=False)) for g in groups]


def split_balanced(groups: list[np.ndarray], rng: np.random.Generator,
                   test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified split of equally sized classes: ``(train_idx, train_y, test_idx, test_y)``.

    Each class contributes ``round(n * test_fraction)`` (at least 1) examples to the test part,
    so both parts stay exactly balanced.
    """
    n = len(groups[0])
    if any(len(g) != n for g in groups):
        raise ValueError("split_balanced needs classes of equal size; balance them first")
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    tr_i, tr_y, te_i, te_y = [], [], [], []
    for c, g in enumerate(groups):
        perm = rng.permutation(g)
        te_i.append(perm[:n_test])
        tr_i.append(perm[n_test:])
        te_y.append(np.full(n_test, c))
        tr_y.append(np.full(n - n_test, c))
    return np.concatenate(tr_i), np.concatenate(tr_y), np.concatenate(te_i), np.concatenate(te_y)


def fit_probe(X: np.ndarray, groups: list[np.ndarray], seed: int = 0, *, repeats: int = REPEATS,
              test_fraction: float = TEST_FRACTION) -> dict:
    """Balance the classes (index arrays into ``X``), split 80/20, fit StandardScaler + LinearSVC.

    The split (after one balancing) is drawn ``repeats`` times and the held-out accuracies are
    averaged, so that the estimate does not hang on one small test fold. Returns
    ``{"n_train", "n_test", "accuracy", "accuracy_std"}`` (sizes of one split).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.default_rng(seed)
    balanced = balance_classes(groups, rng)
    accs = []
    for _ in range(repeats):
        tr_i, tr_y, te_i, te_y = split_balanced(balanced, rng, test_fraction)
        clf = make_pipeline(StandardScaler(), LinearSVC(C=1.0, max_iter=5000, random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a near-separable probe converges slowly; fine
            clf.fit(X[tr_i], tr_y)
        accs.append(float(np.mean(clf.predict(X[te_i]) == te_y)))
    return {"n_train": int(len(tr_i)), "n_test": int(len(te_i)), "accuracy": float(np.mean(accs)),
            "accuracy_std": float(np.std(accs))}


def _order(envs) -> list[str]:
    return sorted(dict.fromkeys(envs), key=lambda e: HOSPITALS.index(e) if e in HOSPITALS else len(HOSPITALS))


def probe_tasks(frame: pd.DataFrame, envs: list[str] | None = None, *, seed: int = 0,
                min_per_class: int = MIN_PER_CLASS) -> tuple[list[dict], list[str]]:
    """The probes to fit: ``([{"task", "hospitals", "label_value", "groups"}], skipped messages)``.

    ``task`` is ``pair`` (every pair, label 0 and 1), ``all`` (all hospitals at once, when there
    are three or more), ``control`` (random halves of one hospital's negatives) or ``label``
    (positives vs negatives within one hospital). A probe whose smallest class has fewer than
    ``min_per_class`` examples is skipped, with a message saying so.
    """
    envs = _order(envs if envs is not None else frame["env"].unique())
    env = frame["env"].to_numpy()
    y = frame["y_true"].to_numpy()
    idx = {(e, v): np.flatnonzero((env == e) & (y == v)) for e in envs for v in (0, 1)}
    tasks, skipped = [], []

    def add(task, hospitals, label_value, groups):
        smallest = min(len(g) for g in groups)
        name = f"{task} {','.join(hospitals)}" + ("" if label_value is None else f" label={label_value}")
        if smallest < min_per_class:
            skipped.append(f"{name}: smallest class has {smallest} images (< {min_per_class})")
            return
        tasks.append({"task": task, "hospitals": list(hospitals), "label_value": label_value, "groups": groups})

    for v in (0, 1):
        for a, b in itertools.combinations(envs, 2):
            add("pair", (a, b), v, [idx[a, v], idx[b, v]])
        if len(envs) >= 3:
            add("all", envs, v, [idx[e, v] for e in envs])
    for e in envs:
        neg = idx[e, 0]
        perm = np.random.default_rng([seed, envs.index(e)]).permutation(neg)
        half = len(perm) // 2
        add("control", (e,), 0, [np.sort(perm[:half]), np.sort(perm[half:2 * half])])
    for e in envs:
        add("label", (e,), None, [idx[e, 0], idx[e, 1]])
    return tasks, skipped


def run_probes(X: np.ndarray, frame: pd.DataFrame, envs: list[str] | None = None, *, seed: int = 0,
               min_per_class: int = MIN_PER_CLASS, repeats: int = REPEATS) -> tuple[pd.DataFrame, list[str]]:
    """Fit every probe of :func:`probe_tasks`; returns (results with ``PROBE_COLUMNS``, skipped)."""
    if len(X) != len(frame):
        raise ValueError(f"{len(X)} embeddings but {len(frame)} rows in the frame")
    tasks, skipped = probe_tasks(frame, envs, seed=seed, min_per_class=min_per_class)
    rows = []
    for t in tasks:
        r = fit_probe(X, t["groups"], seed=seed, repeats=repeats)
        rows.append({"task": t["task"], "hospitals": ",".join(t["hospitals"]),
                     "label_value": "" if t["label_value"] is None else int(t["label_value"]), **r})
    return pd.DataFrame(rows, columns=PROBE_COLUMNS + ["accuracy_std"]), skipped


def metric_name(task: str, hospitals: str, label_value) -> str:
    """The MLflow metric of one probe result, e.g. ``probe/cxp_vs_nih/label0/acc``."""
    hs = hospitals.split(",")
    if task == "pair":
        return f"probe/{hs[0]}_vs_{hs[1]}/label{label_value}/acc"
    if task == "all":
        return f"probe/all/label{label_value}/acc"
    if task == "control":
        return f"probe/control/{hs[0]}/acc"
    if task == "label":
        return f"probe/label/{hs[0]}/acc"
    raise ValueError(f"unknown probe task {task!r}")


def probe_metrics(results: pd.DataFrame) -> dict[str, float]:
    """Every result as a metric, plus the mean and minimum pair accuracy per label value."""
    out = {metric_name(r.task, r.hospitals, r.label_value): float(r.accuracy) for r in results.itertuples()}
    pairs = results[results["task"] == "pair"]
    for v, g in pairs.groupby("label_value"):
        out[f"probe/pairs_mean/label{v}/acc"] = float(g["accuracy"].mean())
        out[f"probe/pairs_min/label{v}/acc"] = float(g["accuracy"].min())
    ctrl = results[results["task"] == "control"]
    if len(ctrl):
        out["probe/control_mean/acc"] = float(ctrl["accuracy"].mean())
    return out
