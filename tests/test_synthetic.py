"""The synthetic hospitals: tables, determinism, resolution, prevalences, the hospital shortcut
and the disease signal (all on CPU, a few seconds)."""

from __future__ import annotations

import hashlib
import math
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cxrstudy.errors import DataError, UsageError
from cxrstudy.hospitals import HOSPITALS
from cxrstudy.labels import DISEASES, LABELS
from cxrstudy.data.schema import AGE_BINS, COLUMNS, SEXES
from cxrstudy.data.sources import open_source
from cxrstudy.data.synthetic import RENDERER_VERSION, SyntheticConfig, SyntheticSource, load_patterns, render
from cxrstudy.data.synthetic.patterns import MIMIC_PUBLISHED, prevalence, rake
from cxrstudy.data.synthetic.render import _site_params

SMALL = SyntheticConfig(n_patients=60, seed=3)


def _pool(img: np.ndarray, k: int = 16) -> np.ndarray:
    n, s, _ = img.shape
    f = s // k
    return img.reshape(n, k, f, k, f).astype(np.float32).mean(axis=(2, 4)).reshape(n, -1) / 255.0


def _render_all(src: SyntheticSource, size: int = 64) -> np.ndarray:
    return np.stack([src.render_row(i, size) for i in range(len(src.table()))])


def _subject_holdout(table: pd.DataFrame) -> np.ndarray:
    """True for training rows: subject-wise 80/20 split (no subject on both sides)."""
    num = table["subject_id"].str.rsplit("-", n=1).str[1].astype(int).to_numpy()
    return num % 5 != 0


def _fit_lr(X, y, train, C=0.1):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000)).fit(X[train], y[train])


# ---- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_patients": 0},
        {"n_patients": 2.5},
        {"n_patients": True},
        {"shortcut_strength": -0.1},
        {"shortcut_strength": float("nan")},
        {"shortcut_strength": "1"},
        {"seed": -1},
        {"sign_strength": -1.0},
        {"sign_strength": math.inf},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(UsageError) as e:
        SyntheticConfig(**kwargs)
    assert next(iter(kwargs)) in str(e.value)


def test_config_roundtrip_and_hashable():
    c = SyntheticConfig(n_patients=10, shortcut_strength=0, seed=4, sign_strength=2)
    assert c.shortcut_strength == 0.0 and isinstance(c.shortcut_strength, float)
    assert SyntheticConfig.from_dict(c.to_dict()) == c
    assert hash(c) == hash(SyntheticConfig.from_dict(c.to_dict()))
    with pytest.raises(UsageError):
        SyntheticConfig.from_dict({"n_patients": 5, "bogus": 1})


# ---- tables ------------------------------------------------------------------------------


@pytest.mark.parametrize("env", HOSPITALS)
def test_table_schema(env):
    src = open_source(env, "synthetic", synthetic=SMALL)
    assert isinstance(src, SyntheticSource) and src.kind == "synthetic" and src.has_images
    t = src.table()
    assert tuple(t.columns) == COLUMNS
    assert t.attrs["synthetic"] is True
    assert (t["env"] == env).all()
    assert t["path"].tolist() == [f"synthetic://{env}/{i}" for i in range(len(t))]
    assert t["subject_id"].str.match(rf"^{env}-\d{{6}}$").all()
    per_subject = t.groupby("subject_id").size()
    assert len(per_subject) == SMALL.n_patients and per_subject.between(1, 4).all()
    assert t["study_id"].is_unique
    assert set(t["view"]) <= {"AP", "PA"}
    assert set(t["sex"]) <= set(SEXES) and set(t["age_bin"]) <= set(AGE_BINS) | {""}
    assert ((t[list(DISEASES)].max(axis=1)) == t["Any"]).all()
    for c in LABELS:
        assert t[c].dtype == np.uint8 and set(t[c].unique()) <= {0, 1}
    # sex and age are patient attributes
    assert (t.groupby("subject_id")[["sex", "age_bin"]].nunique() == 1).all().all()


def test_table_deterministic_and_seeded():
    a = SyntheticSource("cxp", SMALL).table()
    b = SyntheticSource("cxp", SyntheticConfig(n_patients=60, seed=3)).table()
    pd.testing.assert_frame_equal(a, b)
    c = SyntheticSource("cxp", SyntheticConfig(n_patients=60, seed=4)).table()
    assert not a[list(LABELS)].equals(c[list(LABELS)])
    # the returned table is a copy: changing it does not change the source
    src = SyntheticSource("nih", SMALL)
    t = src.table()
    t.loc[0, "Effusion"] = 1 - t.loc[0, "Effusion"]
    assert src.table().loc[0, "Effusion"] != t.loc[0, "Effusion"]


def test_prevalences_follow_the_packaged_patterns():
    patterns = load_patterns()
    for env in HOSPITALS:
        t = SyntheticSource(env, SyntheticConfig(n_patients=4000, seed=1)).table()
        want = prevalence(patterns, env)
        got = t[list(LABELS)].mean()
        assert (got - want).abs().max() < 0.025, (env, (got - want).round(3).to_dict())


def test_mimic_matches_published_prevalences():
    t = SyntheticSource("mimic", SyntheticConfig(n_patients=20000, seed=0)).table()
    got = t[list(MIMIC_PUBLISHED)].mean() * 100
    want = pd.Series(MIMIC_PUBLISHED)
    assert (got - want).abs().max() < 1.5, (got - want).round(2).to_dict()


def test_packaged_patterns():
    p = load_patterns()
    assert set(p["env"]) == set(HOSPITALS)
    assert (p["count"] > 0).all()
    # mimic is raked exactly to the published marginals
    assert (prevalence(p, "mimic") * 100 - pd.Series(MIMIC_PUBLISHED)).abs().max() < 0.01
    # the real hospitals keep their (very different) prevalences
    assert prevalence(p, "cxp")["Effusion"] > 0.3 > prevalence(p, "nih")["Effusion"]


def test_rake_matches_targets():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.integers(0, 2, size=(200, len(DISEASES) + 1)), columns=["No Finding", *DISEASES])
    df["count"] = rng.integers(1, 50, size=len(df)).astype(float)
    w = rake(df, {"Effusion": 0.3, "Edema": 0.1, "Any": 0.8})
    eff = df["Effusion"].to_numpy() == 1
    assert abs(w[eff].sum() / w.sum() - 0.3) < 1e-8
    anyd = df[list(DISEASES)].max(axis=1).to_numpy() == 1
    assert abs(w[anyd].sum() / w.sum() - 0.8) < 1e-8


# ---- images ------------------------------------------------------------------------------


def test_images_deterministic_in_any_order_and_process():
    src = SyntheticSource("pad", SMALL)
    paths = src.table()["path"].tolist()[:6]
    first = [src.read_image(p, 48) for p in paths]
    other = pickle.loads(pickle.dumps(SyntheticSource("pad", SyntheticConfig(n_patients=60, seed=3))))
    for p, img in zip(reversed(paths), reversed(first)):
        assert np.array_equal(other.read_image(p, 48), img)
    digest = hashlib.sha256(first[2].tobytes()).hexdigest()
    code = (
        "import hashlib; from cxrstudy.data.synthetic import SyntheticSource, SyntheticConfig; "
        "s = SyntheticSource('pad', SyntheticConfig(n_patients=60, seed=3)); "
        f"print(hashlib.sha256(s.read_image({paths[2]!r}, 48).tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == digest
    # a different seed gives different pictures
    again = SyntheticSource("pad", SyntheticConfig(n_patients=60, seed=4))
    assert not np.array_equal(again.read_image(paths[0], 48), first[0])


@pytest.mark.parametrize("size", [32, 64, 224])
def test_any_resolution(size):
    src = SyntheticSource("mimic", SMALL)
    img = src.read_image("synthetic://mimic/0", size)
    assert img.shape == (size, size) and img.dtype == np.uint8
    assert 20 < img.mean() < 235 and img.std() > 10


def test_resolution_independent_picture():
    """The same seed draws the same picture at any size (up to pixel noise)."""
    src = SyntheticSource("nih", SMALL)
    small = src.render_row(1, 32).astype(float)
    big = src.render_row(1, 128).astype(float).reshape(32, 4, 32, 4).mean(axis=(1, 3))
    assert np.corrcoef(small.ravel(), big.ravel())[0, 1] > 0.9


def test_bad_paths_raise():
    src = SyntheticSource("cxp", SMALL)
    n = len(src.table())
    for bad in ("synthetic://nih/0", f"synthetic://cxp/{n}", "/data/x.png", "synthetic://cxp/-1"):
        with pytest.raises(DataError):
            src.read_image(bad, 32)


def test_render_labels_forms_and_no_trace_without_signs():
    lab = {d: 0 for d in DISEASES} | {"Effusion": 1, "Cardiomegaly": 1}
    vec7 = [lab[d] for d in DISEASES]
    ref = render(lab, "cxp", (1, 2), 64, patient_seed=7)
    assert np.array_equal(ref, render(vec7, "cxp", (1, 2), 64, patient_seed=7))
    assert np.array_equal(ref, render([0] + vec7, "cxp", (1, 2), 64, patient_seed=7))
    assert np.array_equal(ref, render(pd.Series(lab), "cxp", (1, 2), 64, patient_seed=7))
    assert not np.array_equal(ref, render([0] * 7, "cxp", (1, 2), 64, patient_seed=7))
    # randomness is drawn label-independently: without signs the labels change nothing
    assert np.array_equal(
        render(lab, "cxp", 5, 64, sign_strength=0.0), render([0] * 7, "cxp", 5, 64, sign_strength=0.0)
    )
    with pytest.raises(UsageError):
        render([1, 0], "cxp", 0, 64)
    with pytest.raises(UsageError):
        render(lab, "nowhere", 0, 64)


def test_fingerprint():
    a = SyntheticSource("cxp", SMALL).fingerprint()
    assert a == SyntheticSource("cxp", SyntheticConfig(n_patients=60, seed=3)).fingerprint()
    assert a.startswith("synthetic-")
    for other in (
        SyntheticConfig(n_patients=61, seed=3),
        SyntheticConfig(n_patients=60, seed=4),
        SyntheticConfig(n_patients=60, seed=3, shortcut_strength=0.5),
        SyntheticConfig(n_patients=60, seed=3, sign_strength=0.5),
    ):
        assert SyntheticSource("cxp", other).fingerprint() != a
    assert SyntheticSource("nih", SMALL).fingerprint() != a
    assert RENDERER_VERSION


def test_zero_strength_shares_one_acquisition():
    base = _site_params(HOSPITALS[0], 0.0)
    for env in HOSPITALS[1:]:
        p = _site_params(env, 0.0)
        for k, v in base.items():
            assert np.allclose(p[k], v), (env, k)
    assert _site_params("cxp", 1.0)["log_gamma"] != _site_params("nih", 1.0)["log_gamma"]


# ---- what a classifier can read -------------------------------------------------------------


def _hospital_accuracy(strength: float, a: str = "mimic", b: str = "cxp", n_patients: int = 500,
                       sign_strength: float = 1.0) -> float:
    """Held-out (subject-wise) accuracy of logistic regression on 16x16 thumbnails telling
    hospital a from hospital b, classes balanced."""
    cfg = SyntheticConfig(n_patients=n_patients, shortcut_strength=strength, seed=11, sign_strength=sign_strength)
    sa, sb = SyntheticSource(a, cfg), SyntheticSource(b, cfg)
    ta, tb = sa.table(), sb.table()
    n = min(len(ta), len(tb))
    X = _pool(np.concatenate([_render_all(sa)[:n], _render_all(sb)[:n]]))
    y = np.r_[np.zeros(n), np.ones(n)]
    train = np.r_[_subject_holdout(ta)[:n], _subject_holdout(tb)[:n]]
    return _fit_lr(X, y, train, C=0.01).score(X[~train], y[~train])


def test_hospital_is_readable_by_default():
    acc = _hospital_accuracy(1.0)
    print(f"hospital (mimic vs cxp) accuracy at shortcut_strength=1: {acc:.3f}")
    assert acc >= 0.9


def test_hospitals_indistinguishable_without_shortcut():
    # what is left is the real prevalence gap read through the disease signs (cxp has far
    # more effusion and edema than mimic), a few points above chance
    acc = _hospital_accuracy(0.0)
    print(f"hospital (mimic vs cxp) accuracy at shortcut_strength=0: {acc:.3f}")
    assert abs(acc - 0.5) <= 0.1


def test_hospitals_at_chance_without_shortcut_or_signs():
    acc = _hospital_accuracy(0.0, sign_strength=0.0, n_patients=400)
    print(f"hospital (mimic vs cxp) accuracy at shortcut_strength=0, sign_strength=0: {acc:.3f}")
    assert abs(acc - 0.5) <= 0.08


def test_disease_signs_carry_signal_but_are_not_trivial():
    """Logistic regression on 16x16 thumbnails (shortcut off, so only the signs can help)."""
    from sklearn.metrics import roc_auc_score

    tables, images = [], []
    for env in ("mimic", "cxp"):
        src = SyntheticSource(env, SyntheticConfig(n_patients=700, shortcut_strength=0.0, seed=5))
        tables.append(src.table())
        images.append(_render_all(src))
    t = pd.concat(tables, ignore_index=True)
    X = _pool(np.concatenate(images))
    train = _subject_holdout(t)
    for label in ("Cardiomegaly", "Effusion"):
        y = t[label].to_numpy()
        auc = roc_auc_score(y[~train], _fit_lr(X, y, train).predict_proba(X[~train])[:, 1])
        print(f"{label}: held-out AUROC {auc:.3f} (prevalence {y.mean():.3f})")
        assert 0.6 <= auc <= 0.97, (label, auc)
