"""advise: the cheap signals, the predictor and its leave-one-hospital-pair-out scoring, and the entry
point end to end on a store holding a (fabricated) finished study."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from test_analysis import ROOT, _load, log_compare, new_experiment

from analysis import advise as advise_mod
from analysis.advise_model import (FEATURES, HELPS, HURTS, NO_CLEAR, TABLE_FEATURES, baselines, confusion,
                                   cross_validated, features, fit, measured_verdict, score, verdict)
from cxrstudy.data.dataspec import DataSpec
from cxrstudy.data.synthetic.config import SyntheticConfig
from cxrstudy.evaluate import proxy_net
from cxrstudy.evaluate import signals as signals_mod
from cxrstudy.evaluate.proxy_net import NET_SEEDS, net_fit
from cxrstudy.evaluate.signals import (PROXY_REPEATS, PROXY_SAMPLE, domain_auc, image_features, setting_signals,
                                     table_signals)
from cxrstudy.labels import LABELS
from cxrstudy.tracking import keys
from cxrstudy.train.scoring import auroc_score


# --- signals -----------------------------------------------------------------------------------------

def test_table_signals_follow_the_prevalences_as_training_sees_them():
    rng = np.random.default_rng(0)
    base = (rng.random(4000) < 0.10).astype(int)
    added = (rng.random(1000) < 0.40).astype(int)
    s = table_signals(base, added)
    assert s["prevalence_gap"] == pytest.approx(added.mean() - base.mean())
    assert s["phi"] > 0.2 and s["mutual_information"] > 0.02
    assert s["min_group_share"] == pytest.approx(0.5 * base.mean())  # equal hospital shares per batch
    assert s["log_size_ratio"] == pytest.approx(np.log(1000 / 4000))
    flipped = table_signals(added, base)
    assert flipped["phi"] == pytest.approx(-s["phi"]) and flipped["mutual_information"] == pytest.approx(
        s["mutual_information"])
    # hospital-label balancing undersamples negatives to the higher prevalence: the association goes
    balanced = table_signals(base, added, balance="hospital_label")
    assert abs(balanced["prevalence_gap"]) < 0.01 and balanced["mutual_information"] < 1e-3
    assert balanced["base_n"] < len(base)
    same = table_signals(base, base)
    assert same["phi"] == 0 and same["mutual_information"] == pytest.approx(0.0, abs=1e-12)


def test_the_domain_classifier_reads_a_hospital_only_when_the_images_show_it():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 200)

    def hospital(shift):
        return np.clip(rng.normal(120 + shift, 30, size=(400, 16, 16)), 0, 255).astype(np.uint8), y

    assert domain_auc(hospital(0), hospital(40)) > 0.95
    assert 0.35 < domain_auc(hospital(0), hospital(0)) < 0.65
    assert np.isnan(domain_auc(hospital(0), (hospital(40)[0][:10], y[:10])))  # too few images to fit


def test_setting_signals_on_the_synthetic_hospitals_see_the_shortcut_knob(tmp_path):
    rows = {}
    for strength in (0.0, 1.0):
        spec = DataSpec(source="synthetic", image_size=16, cache_dir=str(tmp_path),
                        synthetic=SyntheticConfig(n_patients=300, shortcut_strength=strength))
        sig = setting_signals(spec, [("cxp", "nih", "Any", "none"), ("nih", "cxp", "Any", "none")], progress=False)
        assert list(sig["base"]) == ["cxp", "nih"]
        assert sig["domain_auc"].nunique() == 1  # one classifier per pair and label, charged once
        # the second setting of the pair pays only for its own single-hospital proxy model
        assert sig["image_seconds"].iloc[0] > sig["image_seconds"].iloc[1] > 0
        assert sig["proxy_delta"].notna().all() and sig["proxy_delta"].abs().max() <= 1
        rows[strength] = sig.iloc[0]
    assert rows[1.0]["domain_auc"] > 0.9 > 0.7 > rows[0.0]["domain_auc"]
    assert rows[1.0]["prevalence_gap"] == rows[0.0]["prevalence_gap"]  # same patients and labels


def test_the_study_proxy_does_not_depend_on_which_settings_are_asked_or_in_what_order(tmp_path, monkeypatch):
    monkeypatch.setattr(proxy_net, "NET_STEPS", 20)  # the networks' plumbing, not how well they learn
    # each hospital's train samples (one per repeat) are its own, so advising on a subset of a study's
    # settings, or in another order, gives each setting the proxy value it gets in the whole study
    spec = DataSpec(source="synthetic", image_size=16, cache_dir=str(tmp_path),
                    synthetic=SyntheticConfig(n_patients=1500, shortcut_strength=1.0))
    settings = [("cxp", "nih", "Any", "none"), ("nih", "cxp", "Any", "none"), ("mimic", "nih", "Any", "none")]
    assert all(len(spec.rows(env, "train")) > PROXY_SAMPLE for env in ("cxp", "nih", "mimic"))  # samples drawn
    whole = setting_signals(spec, settings, progress=False).set_index(["base", "added"])
    part = setting_signals(spec, settings[::-1][:2], progress=False).set_index(["base", "added"])
    for key in part.index:
        assert part.loc[key, "proxy_delta"] == whole.loc[key, "proxy_delta"]
        assert part.loc[key, "domain_auc"] == whole.loc[key, "domain_auc"]
        # the network proxy's head covers every label, so asking for another label changes nothing
        assert part.loc[key, "net_delta"] == whole.loc[key, "net_delta"]
    other = setting_signals(spec, [settings[0], ("cxp", "nih", "Effusion", "none")], progress=False)
    assert other["net_delta"].iloc[0] == whole.loc[("cxp", "nih"), "net_delta"]


def test_image_features_see_the_texture_a_thumbnail_averages_away():
    # two "hospitals" with the same picture on average, one with a fine grain: their thumbnails and
    # mean intensity agree, the texture columns tell them apart
    smooth = np.full((50, 32, 32), 120.0)
    grainy = smooth + 12.0 * np.where(np.add.outer(np.arange(32), np.arange(32)) % 2 == 0, 1, -1)  # fine grain
    a, b = image_features(smooth.astype(np.uint8)), image_features(grainy.astype(np.uint8))
    assert a.shape == b.shape == (50, 64 + 7 + 17)
    assert np.abs(a[:, :65] - b[:, :65]).max() < 1e-6  # thumbnail and mean intensity
    assert (b[:, -17:] > a[:, -17:] + 0.1).all()  # the Laplacian of every cell and of the whole image


def test_the_study_proxy_fits_each_arm_model_once_whatever_it_is_scored_on(tmp_path, monkeypatch):
    # the single-hospital model of a base is the same whichever hospital is added (only the val
    # splits it is scored on differ), and a pair's model serves both directions of the pair
    spec = DataSpec(source="synthetic", image_size=16, cache_dir=str(tmp_path),
                    synthetic=SyntheticConfig(n_patients=300, shortcut_strength=1.0))
    fits = []
    real_fit = signals_mod.proxy_fit
    monkeypatch.setattr(signals_mod, "proxy_fit", lambda train, balance: fits.append(len(train)) or real_fit(train, balance))
    envs = ("cxp", "nih", "pad")
    settings = [(b, a, "Any", "none") for b in envs for a in envs if a != b]
    sig = setting_signals(spec, settings, progress=False)
    assert sorted(fits) == [1] * (3 * PROXY_REPEATS) + [2] * (3 * PROXY_REPEATS)  # 3 bases, 3 pairs
    assert sig["proxy_delta"].notna().all()


def test_the_network_proxy_fits_one_network_per_arm_for_every_label(tmp_path, monkeypatch):
    # NET_SEEDS multi-label networks per training arm (3 single hospitals, 3 pairs), whatever the labels
    monkeypatch.setattr(proxy_net, "NET_STEPS", 20)  # what is fitted, not how well
    spec = DataSpec(source="synthetic", image_size=16, cache_dir=str(tmp_path),
                    synthetic=SyntheticConfig(n_patients=300, shortcut_strength=1.0))
    fits = []
    real_fit = signals_mod.net_fit
    monkeypatch.setattr(signals_mod, "net_fit",
                        lambda train, balance, **kw: fits.append(len(train)) or real_fit(train, balance, **kw))
    envs = ("cxp", "nih", "pad")
    settings = [(b, a, lab, "none") for b in envs for a in envs if a != b for lab in ("Any", "Effusion")]
    sig = setting_signals(spec, settings, progress=False)
    assert sorted(fits) == [1] * (3 * NET_SEEDS) + [2] * (3 * NET_SEEDS)
    assert sig["net_delta"].notna().all() and sig["net_delta"].abs().max() <= 1
    assert sig.groupby("label")["net_delta"].nunique().min() > 1  # each label reads its own output


def _patterned(n, rng, size=16):
    """Images whose first label shows as a bright square and second as a dark stripe; 9 label columns."""
    y = np.zeros((n, len(LABELS)), dtype=np.int64)
    y[:, :2] = rng.random((n, 2)) < 0.4
    x = rng.normal(120, 20, size=(n, size, size))
    x[y[:, 0] == 1, 2:7, 2:7] += 60
    x[y[:, 1] == 1, 10:12, :] -= 60
    return np.clip(x, 0, 255).astype(np.uint8), y


def test_the_network_proxy_learns_each_label_from_the_pixels_and_is_reproducible():
    rng = np.random.default_rng(0)
    a, b = _patterned(600, rng), _patterned(400, rng)
    val_x, val_y = _patterned(300, rng)
    model = net_fit([a, b], "none", steps=60)
    scores = model(val_x)
    assert scores.shape == (300, len(LABELS)) and ((scores >= 0) & (scores <= 1)).all()
    assert auroc_score(val_y[:, 0], scores[:, 0]) > 0.9 and auroc_score(val_y[:, 1], scores[:, 1]) > 0.9
    assert np.array_equal(net_fit([a, b], "none", steps=60)(val_x), scores)  # same data, same seed


def test_the_network_proxy_balances_labels_as_undersampling_would():
    # under hospital-label balancing each hospital's negatives of a label are down-weighted so that its
    # weighted prevalence is the arm's highest, label by label; without balancing every weight is 1
    rng = np.random.default_rng(0)
    ys = [(rng.random((2000, 3)) < [0.1, 0.5, 0.3]).astype(np.int64),
          (rng.random((1000, 3)) < [0.4, 0.2, 0.3]).astype(np.int64)]
    plain = proxy_net._label_weights(ys, "none")
    assert all((w == 1).all() for w in plain)
    ws = proxy_net._label_weights(ys, "hospital_label")
    for j in range(3):
        top = max(y[:, j].mean() for y in ys)
        for y, w in zip(ys, ws):
            assert (w[y[:, j] == 1, j] == 1).all()
            assert (w[:, j] * y[:, j]).sum() / w[:, j].sum() == pytest.approx(top)


def test_advise_learns_only_from_comparisons_whose_models_learned_and_converged():
    from analysis.advise_study import sound
    t = pd.DataFrame({"n_constant_models": [0, 1, 0, np.nan], "n_unconverged_models": [0, 0, 2, np.nan]})
    assert list(sound(t)) == [True, False, False, True]
    assert list(sound(pd.DataFrame({"x": [1, 2]}))) == [True, True]  # older comparisons log neither count


# --- the predictor -----------------------------------------------------------------------------------

def _grid(seed=0, n_pairs=6, noise=0.01):
    """Fabricated studied settings: adding a hospital hurts in proportion to how readable the
    hospital is times how much the prevalences differ (the paper's mechanism), else helps a little."""
    rng = np.random.default_rng(seed)
    net_noise = np.random.default_rng(seed + 1000)  # its own stream: the other signals stay as they were
    rows = []
    for k in range(n_pairs):
        for label in ("A", "B"):
            p_base, p_added = rng.uniform(0.05, 0.5, size=2)
            dom = rng.choice([0.5, 0.75, 1.0])
            for base, added, pb, pa in ((f"h{k}", f"g{k}", p_base, p_added), (f"g{k}", f"h{k}", p_added, p_base)):
                gap = pa - pb
                delta = 0.05 - 1.6 * (dom - 0.5) * abs(gap) + rng.normal(0, noise)
                rows.append({"base": base, "added": added, "label": label, "balance": "none",
                             "prevalence_gap": gap, "log_size_ratio": 0.0, "min_group_share": 0.5 * min(pa, pb),
                             "domain_auc": dom, "proxy_delta": 0.5 * delta + rng.normal(0, 0.1),
                             "net_delta": 0.8 * delta + net_noise.normal(0, 0.1),
                             "delta_mean": delta, "delta_ci_low": delta - 0.03,
                             "delta_ci_high": delta + 0.03})
    return pd.DataFrame(rows)


def test_the_predictor_learns_the_mechanism_and_is_scored_on_pairs_it_never_saw():
    h = _grid()
    X = features(h)
    groups = advise_mod.pair_of(h)
    pred = fit(X, h["delta_mean"], groups)
    assert set(pred.features) == set(FEATURES)
    cv = cross_validated(X, h["delta_mean"], groups)
    s = score(measured_verdict(h["delta_ci_low"], h["delta_ci_high"]), cv["mu"], cv["p_hurt"], h["delta_mean"])
    assert s["n_significantly_hurt"] > 3 and s["sign_accuracy"] >= 0.8 and s["hurt_auroc"] >= 0.9
    # leave-one-pair-out: a pair's held-out predictions do not move when its own deltas change
    h2 = h.copy()
    h2.loc[[g == groups[0] for g in groups], "delta_mean"] += 5.0
    cv2 = cross_validated(features(h2), h2["delta_mean"], groups)
    mine = np.array([g == groups[0] for g in groups])
    np.testing.assert_allclose(cv2["mu"][mine], cv["mu"][mine])
    assert not np.allclose(cv2["mu"][~mine], cv["mu"][~mine])
    # the table-only predictor cannot see the readability: it does worse on this mechanism
    cv_t = cross_validated(X, h["delta_mean"], groups, TABLE_FEATURES)
    assert np.corrcoef(cv_t["mu"], h["delta_mean"])[0, 1] < np.corrcoef(cv["mu"], h["delta_mean"])[0, 1]


def test_verdicts_scores_baselines_and_confusion():
    assert verdict([0.9, 0.5, 0.1]) == [HURTS, NO_CLEAR, HELPS]
    assert measured_verdict([-0.2, -0.1, 0.05], [-0.01, 0.1, 0.2]) == [HURTS, NO_CLEAR, HELPS]
    s = score([HURTS, HELPS, NO_CLEAR], [-0.1, -0.1, 0.2], [0.9, 0.8, 0.1], [-0.1, 0.1, 0.0])
    assert s["sign_accuracy"] == 0.5 and s["hurt_auroc"] == 1.0 and s["n_significant"] == 2
    assert np.isnan(score([HELPS, NO_CLEAR], [0.1, 0.1], [0.1, 0.2], [0.1, 0.0])["hurt_auroc"])
    h = _grid(n_pairs=3)
    b = baselines(features(h), h["delta_mean"], advise_mod.pair_of(h))
    assert set(b) == {"always_helps", "prevalence_rule", "domain_only", "proxy_only", "net_only"}
    assert (b["prevalence_rule"]["p_hurt"] == (h["prevalence_gap"] < 0)).all()
    assert (b["always_helps"]["mu"] > 0).all()
    c = confusion([HURTS, HURTS, HELPS], [HURTS, NO_CLEAR, HELPS])
    assert c.loc[HURTS, HURTS] == 1 and c.loc[HURTS, NO_CLEAR] == 1 and c.to_numpy().sum() == 3


def test_recommendation_prefers_pooling_then_balancing_then_keeping_apart():
    adv = pd.DataFrame([("a", "b", "L", "none", HURTS), ("a", "b", "L", "hospital_label", NO_CLEAR),
                        ("b", "a", "L", "none", HURTS), ("b", "a", "L", "hospital_label", HURTS),
                        ("a", "c", "L", "none", HELPS)], columns=["base", "added", "label", "balance", "verdict"])
    assert list(advise_mod.recommend(adv)) == [advise_mod.POOL_BALANCED, advise_mod.POOL_BALANCED,
                                               advise_mod.KEEP_APART, advise_mod.KEEP_APART, advise_mod.POOL]


# --- the entry point ---------------------------------------------------------------------------------

entry = _load(ROOT / "entrypoints" / "advise.py", "_entry_advise")

def _argv(tmp_path, *extra):
    return ["--envs", "mimic,cxp,nih", "--labels", "Any", "--image_size", "16", "--synthetic_patients", "300",
            "--cache_dir", str(tmp_path / "cache"), *extra]


def test_advise_learns_from_a_finished_study_and_scores_itself_against_it(store, tmp_path):
    eid = new_experiment("study")
    # a fabricated finished study at two shortcut strengths: at 1, adding a hospital with a different
    # prevalence hurts in proportion to the gap; at 0 (nothing to read), adding helps
    spec = DataSpec(source="synthetic", image_size=16, cache_dir=str(tmp_path / "cache"),
                    synthetic=SyntheticConfig(n_patients=300))
    envs = ("mimic", "cxp", "nih")
    prev = {e: spec.rows(e, "train")["Any"].mean() for e in envs}
    for strength in (0.0, 1.0):
        for b in envs:
            for a in envs:
                if a != b:
                    d = 0.04 if strength == 0 else 0.02 - 0.6 * abs(prev[a] - prev[b])
                    for bal in ("none", "hospital_label"):
                        dd = d if bal == "none" else 0.03
                        log_compare(eid, b, a, "Any", dd, dd - 0.02, dd + 0.02, balance=bal, strength=strength)
    main_run = MlflowClient().create_run(eid, tags={keys.ENTRY_TAG: keys.ENTRY_MAIN}).info.run_id
    MlflowClient().set_terminated(main_run)
    entry.main(_argv(tmp_path, "--against", main_run))  # a main run's id names its experiment
    runs = mlflow.search_runs([eid], f"tags.`{keys.ENTRY_TAG}` = '{keys.ENTRY_ADVISE}'", output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    m = runs[0].data.metrics
    assert m["advise/n_settings"] == 12  # 6 ordered pairs x 1 label x 2 balance modes
    assert m["advise/validation/advise/n_settings"] == 24  # the study: 12 settings at two strengths
    assert m["advise/validation/advise/sign_accuracy"] >= 0.8
    assert m["advise/validation/always_helps/n_significantly_hurt"] > 0
    assert "advise/validation/domain_only/hurt_auroc" in m
    assert "advise/cost/fraction" not in m  # a fabricated study has no training runs to weigh the signals against
    arts = {a.path for a in MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert {"advice.csv", "advice_validation.csv", "advice_confusion.csv", "advice_coefficients.csv",
            "predictor.json", "advice.png", "advice.md"} <= arts
    path = MlflowClient().download_artifacts(runs[0].info.run_id, "advice.csv", str(tmp_path))
    advice = pd.read_csv(path)
    assert set(advice["verdict"]) <= {HURTS, NO_CLEAR, HELPS} and advice["p_hurt"].between(0, 1).all()
    assert advice["domain_auc"].gt(0.9).all()  # strength 1 (the default): the hospitals are readable
    saved = json.loads(open(MlflowClient().download_artifacts(runs[0].info.run_id, "predictor.json",
                                                               str(tmp_path))).read())
    assert saved["predictor"]["n_fit"] == 24 and saved["table_predictor"]["features"] == list(TABLE_FEATURES)


def test_advise_without_a_study_uses_the_shipped_predictor(store, tmp_path, capsys):
    entry.main(_argv(tmp_path, "--balances", "none"))
    out = capsys.readouterr().out
    assert "the shipped predictor" in out
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{keys.ENTRY_TAG}` = 'advise'",
                              output_format="list")
    assert len(runs) == 1 and runs[0].data.metrics["advise/n_settings"] == 6
    assert not any(k.startswith("advise/validation/") for k in runs[0].data.metrics)


def test_advise_checks_its_parameters_first(store, tmp_path):
    for bad in (["--envs", "cxp"], ["--balances", "size_matched"], ["--against", "no-such-experiment"]):
        with pytest.raises(SystemExit) as e:
            entry.main(_argv(tmp_path, *bad))
        assert e.value.code == 2
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")
