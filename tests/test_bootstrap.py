"""Patient-level, hospital-stratified bootstrap of worst-group accuracy."""

import time

import numpy as np
import pandas as pd
import pytest

from cxrstudy.evaluate.bootstrap import (
    check_aligned,
    mean_delta_bootstrap,
    paired_delta_bootstrap,
    wga_bootstrap,
)
from cxrstudy.evaluate.metrics import group_accuracy, worst_group


def make_predictions(n_subjects, acc, seed=0, envs=("cxp", "nih"), max_images=4, prevalence=0.3):
    """Random prediction table: ``n_subjects`` per hospital, 1..max_images images each,
    each image right with probability ``acc``. Subject ids restart at 0 in every
    hospital, so the same id occurs in two hospitals (different people)."""
    rng = np.random.default_rng(seed)
    parts = []
    for env in envs:
        k = rng.integers(1, max_images + 1, n_subjects)
        sid = np.repeat(np.arange(n_subjects), k)
        y = (rng.random(len(sid)) < prevalence).astype(int)
        right = rng.random(len(sid)) < acc
        parts.append(pd.DataFrame(
            {"env": env, "subject_id": sid, "y_true": y, "y_pred": np.where(right, y, 1 - y)}
        ))
    df = pd.concat(parts, ignore_index=True)
    df["image_id"] = np.arange(len(df))
    return df


def with_preds(df, acc, seed):
    rng = np.random.default_rng(seed)
    right = rng.random(len(df)) < acc
    out = df.copy()
    out["y_pred"] = np.where(right, df["y_true"], 1 - df["y_true"])
    return out


def reference_wga_samples(df, n_resamples, seed):
    """Slow reference: replay the documented draws, build each resampled table by
    concatenating whole subjects, and score it with the metrics module."""
    rng = np.random.default_rng(seed)
    d = df.assign(env=df["env"].astype(str), subject_id=df["subject_id"].astype(str))
    envs = sorted(d["env"].unique())
    subjects = {e: sorted(d.loc[d["env"] == e, "subject_id"].unique()) for e in envs}
    rows = {k: g for k, g in d.groupby(["env", "subject_id"])}
    out = []
    for _ in range(n_resamples):
        pieces = []
        for e in envs:
            subs = subjects[e]
            for i in rng.integers(0, len(subs), size=len(subs)):
                pieces.append(rows[(e, subs[i])])
        r = pd.concat(pieces)
        out.append(worst_group(group_accuracy(r["env"], r["y_true"], r["y_pred"]))[0])
    return np.array(out)


# ------------------------------------------------------------------ single model


def test_ci_contains_point_estimate():
    df = make_predictions(300, 0.8)
    res = wga_bootstrap(df, n_resamples=500, seed=1)
    expected = worst_group(group_accuracy(df["env"], df["y_true"], df["y_pred"]))
    assert (res["estimate"], res["group"]) == expected
    assert res["low"] <= res["estimate"] <= res["high"]
    assert res["low"] < res["high"]
    assert res["samples"].shape == (500,)
    assert res["n_subjects"] == 600


def test_width_shrinks_with_more_subjects():
    small = wga_bootstrap(make_predictions(100, 0.8, seed=2), n_resamples=400, seed=0)
    large = wga_bootstrap(make_predictions(3000, 0.8, seed=2), n_resamples=400, seed=0)
    assert large["high"] - large["low"] < 0.5 * (small["high"] - small["low"])


def test_matches_brute_force_subject_resampling():
    # Small table, uneven images per subject, ids repeated across hospitals, a third
    # hospital with few positives (so some resamples lose a group).
    df = make_predictions(7, 0.7, seed=5, envs=("pad", "cxp", "nih"), max_images=6, prevalence=0.25)
    df = df.sample(frac=1.0, random_state=0)  # row order must not matter
    res = wga_bootstrap(df, n_resamples=60, seed=11)
    ref = reference_wga_samples(df, 60, 11)
    assert np.array_equal(res["samples"], ref)
    assert res["n_incomplete"] > 0


def test_subject_level_resampling_keeps_images_together():
    # All positives of nih belong to ONE subject with 10 images, 4 of them right; every
    # other prediction is right. Resampling subjects can only give nih/y=1 accuracy 0.4
    # (subject drawn, any number of times) or drop the group (WGA 1.0); resampling
    # images would give many other values.
    df = make_predictions(30, 1.0, seed=3, prevalence=0.0)
    one = pd.DataFrame({"env": "nih", "subject_id": 999, "y_true": [1] * 10,
                        "y_pred": [1] * 4 + [0] * 6, "image_id": np.arange(10) + 10_000})
    df = pd.concat([df, one], ignore_index=True)
    res = wga_bootstrap(df, n_resamples=400, seed=0)
    assert res["estimate"] == 0.4 and res["group"] == "nih/y=1"
    values = set(res["samples"].tolist())
    assert values == {0.4, 1.0}
    assert res["n_incomplete"] == int(np.sum(res["samples"] == 1.0))


def test_deterministic_given_seed():
    df = make_predictions(200, 0.75)
    a = wga_bootstrap(df, n_resamples=200, seed=7)["samples"]
    b = wga_bootstrap(df, n_resamples=200, seed=7)["samples"]
    c = wga_bootstrap(df, n_resamples=200, seed=8)["samples"]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # Prefix property: results do not depend on how many resamples are blocked together.
    assert np.array_equal(wga_bootstrap(df, n_resamples=50, seed=7)["samples"], a[:50])


def test_bad_input():
    df = make_predictions(10, 0.8)
    with pytest.raises(ValueError, match="lacks columns"):
        wga_bootstrap(df.drop(columns="subject_id"))
    with pytest.raises(ValueError):
        wga_bootstrap(df, n_resamples=0)
    with pytest.raises(ValueError, match="has no positives"):
        wga_bootstrap(df.assign(y_true=0, y_pred=0), expected_envs=["cxp", "nih"])


# ------------------------------------------------------------------ paired models


def test_identical_models_give_exact_zero_delta():
    df = make_predictions(200, 0.8)
    res = paired_delta_bootstrap(df, df.copy(), n_resamples=300, seed=3)
    assert res["estimate"] == 0.0
    assert np.all(res["samples"] == 0.0)
    assert (res["low"], res["high"]) == (0.0, 0.0)


def test_big_difference_excludes_zero():
    base = make_predictions(300, 0.6)
    better = with_preds(base, 0.95, seed=1)
    res = paired_delta_bootstrap(base, better, n_resamples=500, seed=0)
    assert res["estimate"] == pytest.approx(res["wga_b"] - res["wga_a"])
    assert res["estimate"] > 0.2
    assert 0 < res["low"] <= res["estimate"] <= res["high"]
    worse = paired_delta_bootstrap(better, base, n_resamples=500, seed=0)
    assert worse["high"] < 0
    assert np.array_equal(worse["samples"], -res["samples"])


def test_paired_matches_single_model_bootstraps_with_same_draws():
    a = make_predictions(150, 0.7, seed=4)
    b = with_preds(a, 0.8, seed=9)
    res = paired_delta_bootstrap(a, b, n_resamples=200, seed=5)
    sa = wga_bootstrap(a, n_resamples=200, seed=5)["samples"]
    sb = wga_bootstrap(b, n_resamples=200, seed=5)["samples"]
    assert np.array_equal(res["samples"], sb - sa)


def test_alignment_contract():
    a = make_predictions(20, 0.8)
    b = with_preds(a, 0.9, seed=1)
    with pytest.raises(ValueError, match="rows"):
        paired_delta_bootstrap(a, b.iloc[:-1])
    with pytest.raises(ValueError, match="same order"):
        paired_delta_bootstrap(a, b.iloc[::-1])
    with pytest.raises(ValueError, match="image_id"):
        paired_delta_bootstrap(a, b.assign(image_id=b["image_id"] + 1))
    with pytest.raises(ValueError, match="not the other"):
        paired_delta_bootstrap(a, b.drop(columns="image_id"))
    with pytest.raises(ValueError, match="y_true"):
        paired_delta_bootstrap(a, b.assign(y_true=1 - b["y_true"]))
    # The pandas index is ignored; ids compare as strings.
    check_aligned([a, b.reset_index(drop=True).set_axis(np.arange(len(b)) + 5)])
    check_aligned([a, b.assign(subject_id=b["subject_id"].astype(str))])


def test_mean_delta_over_seeds():
    a0 = make_predictions(200, 0.7, seed=0)
    pairs = [(with_preds(a0, 0.7, 10 + k), with_preds(a0, 0.85, 20 + k)) for k in range(3)]
    res = mean_delta_bootstrap(pairs, n_resamples=300, seed=2)
    singles = [paired_delta_bootstrap(a, b, n_resamples=300, seed=2) for a, b in pairs]
    assert res["per_seed"] == [s["estimate"] for s in singles]
    assert res["estimate"] == pytest.approx(np.mean(res["per_seed"]))
    assert np.allclose(res["samples"], np.mean([s["samples"] for s in singles], axis=0),
                       rtol=0, atol=1e-15)
    assert res["low"] <= res["estimate"] <= res["high"]
    assert res["low"] > 0
    # Identical pairs give the single-pair answer.
    same = mean_delta_bootstrap([pairs[0]] * 3, n_resamples=300, seed=2)
    assert np.array_equal(same["samples"], singles[0]["samples"])
    with pytest.raises(ValueError, match="pair 1 df_b"):
        mean_delta_bootstrap([pairs[0], (pairs[1][0], pairs[1][1].iloc[:-1])])


# ------------------------------------------------------------------------ timing


def test_timing_1000_resamples_30k_subjects():
    df = make_predictions(15_000, 0.8, seed=0, max_images=3)  # 30k subjects, ~60k images
    other = with_preds(df, 0.85, seed=1)
    t0 = time.perf_counter()
    res = wga_bootstrap(df, n_resamples=1000, seed=0)
    t1 = time.perf_counter()
    paired_delta_bootstrap(df, other, n_resamples=1000, seed=0)
    t2 = time.perf_counter()
    print(
        f"\nbootstrap timing: {res['n_subjects']} subjects, {len(df)} images, 1000 resamples: "
        f"wga_bootstrap {t1 - t0:.2f}s, paired_delta_bootstrap {t2 - t1:.2f}s"
    )
    assert res["n_subjects"] == 30_000


# ----------------------------------------------------------- seed-aware intervals


def test_identical_seeds_give_the_patient_bootstraps_interval():
    a0 = make_predictions(200, 0.7, seed=0)
    pair = (with_preds(a0, 0.7, 10), with_preds(a0, 0.85, 20))
    one = paired_delta_bootstrap(*pair, n_resamples=300, seed=2)
    same = mean_delta_bootstrap([pair] * 3, n_resamples=300, seed=2)
    assert same["seed_sd"] == 0 and same["n_seeds"] == 3
    assert (same["low"], same["high"]) == (one["low"], one["high"])
    assert (same["patient_low"], same["patient_high"]) == (one["low"], one["high"])


def test_seeds_that_disagree_widen_the_interval():
    a0 = make_predictions(300, 0.7, seed=0)
    # per-seed two-hospital models of very different quality: the deltas spread over seeds
    pairs = [(with_preds(a0, 0.75, 10 + k), with_preds(a0, acc, 20 + k)) for k, acc in enumerate((0.6, 0.75, 0.9))]
    res = mean_delta_bootstrap(pairs, n_resamples=300, seed=2)
    sd = np.std(res["per_seed"], ddof=1)
    assert res["seed_sd"] == pytest.approx(sd) and sd > 0.05
    assert res["low"] < res["patient_low"] and res["high"] > res["patient_high"]
    # each side: patient half-width and t(0.975, 2) * sd / sqrt(3) in quadrature
    h_seed = 4.302652729911275 * sd / np.sqrt(3)
    assert res["seed_halfwidth"] == pytest.approx(h_seed)
    assert res["estimate"] - res["low"] == pytest.approx(np.hypot(res["estimate"] - res["patient_low"], h_seed))
    assert res["high"] - res["estimate"] == pytest.approx(np.hypot(res["patient_high"] - res["estimate"], h_seed))


def test_seed_aware_rule_is_calibrated_where_the_patient_bootstrap_alone_is_not():
    """A/A under training randomness: two arms of the same 'configuration', each seed's model with
    its own accuracy drawn around the same mean (what a reseed does). The patient bootstrap alone
    calls many of these significant; the seed-aware rule about 5% or fewer."""
    rng = np.random.default_rng(0)
    base = make_predictions(150, 0.8, seed=1, max_images=2)
    calls_patient, calls_seed = 0, 0
    reps = 60
    for r in range(reps):
        accs = np.clip(0.8 + rng.normal(0, 0.06, size=6), 0.5, 0.99)
        pairs = [(with_preds(base, accs[k], 1000 * r + k), with_preds(base, accs[3 + k], 1000 * r + 3 + k))
                 for k in range(3)]
        res = mean_delta_bootstrap(pairs, n_resamples=200, seed=r)
        calls_patient += res["patient_high"] < 0 or res["patient_low"] > 0
        calls_seed += res["high"] < 0 or res["low"] > 0
    assert calls_patient / reps > 0.2
    assert calls_seed / reps <= 0.1
