"""The A/A noise floor: which comparisons a study makes, and how the analysis reads them back."""

import mlflow
import numpy as np

from cxrstudy.evaluate.compare import Setting, pair_config, single_config
from cxrstudy.evaluate.noise_floor import aa_comparisons, aa_training_cells, disjoint_seeds
from cxrstudy.runs.study import grid_cells, grid_settings
from cxrstudy.tracking import keys
from test_train_evaluate import tiny_config


def test_the_default_grid_has_twelve_aa_comparisons_whose_first_arm_is_the_studys_own_models(tmp_path):
    template = tiny_config(tmp_path)
    envs, labels, seeds = ["mimic", "cxp", "nih"], ["Effusion", "Any"], [0, 1, 2]
    aa = aa_comparisons(template, envs, labels, seeds)
    assert len(aa) == 12 and sorted(a.arm for a in aa).count("single") == 6
    assert disjoint_seeds(seeds) == (3, 4, 5) and disjoint_seeds([4]) == (5,)
    study = {c.content_hash() for c in grid_cells(template, grid_settings(envs, labels, ["none", "hospital_label"]),
                                                   seeds)}
    for a in aa:
        assert {c.content_hash() for c in a.configs(a.seeds_a)} <= study  # arm a: trained by the grid anyway
        assert not {c.content_hash() for c in a.configs(a.seeds_b)} & study
        assert a.config.balance == "none"
        # a single-hospital model is scored on every study hospital, a pair on its own two
        assert a.eval_envs == (tuple(envs) if a.arm == "single" else a.config.envs)
    assert len(aa_training_cells(aa)) == 36 and len({a.key() for a in aa}) == 12
    st = Setting("nih", "cxp", "Any")
    pair = next(a for a in aa if a.config.envs == pair_config(template, st, 0).envs and a.config.label == "Any")
    assert pair.configs([0])[0].content_hash() == pair_config(template, st, 0).content_hash()
    single = next(a for a in aa if a.config.envs == ("nih",) and a.config.label == "Any")
    assert single.configs([2])[0].content_hash() == single_config(template, "nih", "Any", 2).content_hash()


def test_analysis_counts_significant_aa_comparisons_of_its_own_seeds_and_strength(store):
    from analysis.noise_floor import noise_floor_summary
    from analysis.queries import noise_floor_runs

    def log(hospitals, seeds, strength, lo, hi):
        tags = {keys.ENTRY_TAG: keys.ENTRY_NOISE_FLOOR, "hospitals": hospitals, "label": "Any", "arm": "pair",
                "eval_hospitals": hospitals, keys.SEEDS_TAG: seeds, keys.AA_SEEDS_TAG: "3,4,5",
                keys.SHORTCUT_STRENGTH_TAG: strength, "source": "synthetic"}
        with mlflow.start_run(tags=tags):
            mlflow.log_metrics({keys.NOISE_FLOOR_PREFIX + "delta_wga": (lo + hi) / 2,
                                keys.NOISE_FLOOR_PREFIX + "delta_ci_low": lo, keys.NOISE_FLOOR_PREFIX + "delta_ci_high": hi,
                                keys.NOISE_FLOOR_PREFIX + "significant": keys.significance(lo, hi)})

    log("cxp,nih", "0,1,2", "1", -0.1, 0.1)
    log("mimic,nih", "0,1,2", "1", 0.01, 0.2)  # significant (helped)
    log("mimic,cxp", "0,1,2", "1", -0.3, -0.05)  # significant (hurt)
    log("cxp,nih", "0,1,2", "0", 0.02, 0.1)  # another strength
    log("cxp,nih", "0", "1", 0.02, 0.1)  # another seed set
    eid = mlflow.get_experiment_by_name("Default").experiment_id
    runs = noise_floor_runs([eid], seeds=[0, 1, 2], shortcut_strengths=[1.0])
    s = noise_floor_summary(runs)
    assert (s["n_comparisons"], s["n_significant"], s["n_significant_hurt"], s["n_significant_helped"]) == (3, 2, 1, 1)
    assert s["fraction_significant"] == 2 / 3 and np.isclose(s["max_abs_delta"], 0.175)
    assert len(noise_floor_runs([eid])) == 5
