"""Every string that more than one module (or the analysis, or a user's query) relies on.

Tags, MLflow metric prefixes, the names of the entry points as tagged and the arms of a
comparison are defined here once and imported everywhere else (the balance modes, a training
concept, live with balancing: :mod:`cxrstudy.train.balancing`; the default method's name with the
method registry). This module imports nothing but the standard library and that one name, so any
layer from training on may use it.
"""

from __future__ import annotations

from cxrstudy.train.registry import DEFAULT_METHOD  # noqa: F401 (re-exported: runs before methods existed carry no method tag; they are ERM)

# --- run tags ---------------------------------------------------------------------------
ENTRY_TAG = "cxrstudy.entry"  # which entry point made the run (values: ENTRY_* below)
SYNTHETIC_TAG = "cxrstudy.synthetic"  # "true" on every run that used the synthetic hospitals
CONFIG_HASH_TAG = "cxrstudy.config_hash"  # a training run's identity (config + data fingerprint)
DATA_FINGERPRINT_TAG = "cxrstudy.data_fingerprint"  # the fingerprint of the data a training run read
METHOD_TAG = "method"  # the training method of a training or comparison run (like "balance", "label")
SHORTCUT_STRENGTH_TAG = "shortcut_strength"  # a synthetic comparison's shortcut strength (the dose)
COMPARE_KEY_TAG = "cxrstudy.compare_key"  # a comparison's identity
PROBE_KEY_TAG = "cxrstudy.probe_key"  # a probe's identity
NOISE_FLOOR_KEY_TAG = "cxrstudy.noise_floor_key"  # an A/A comparison's identity
SEEDS_TAG = "seeds"  # the training seeds a comparison averages over ("0,1,2")
AA_SEEDS_TAG = "seeds_b"  # an A/A comparison's second, disjoint seed set
RESUMED_TAG = "cxrstudy.resumed"
REUSED_RUN_TAG = "cxrstudy.reused_run"
REUSED_CONFIG_HASH_TAG = "cxrstudy.reused_config_hash"
# the registered model version a training run produced (or, on a run that reused one, the version it reused)
REGISTERED_MODEL_TAG = "registered_model"
REGISTERED_VERSION_TAG = "registered_version"
SLURM_JOB_TAG = "cxrstudy.slurm_job"  # "<array job id>_<task id>" of the task that owns a run
CELL_HASH_TAG = "cxrstudy.cell_hash"  # the config hash of the cell a Slurm task trains
TUNE_STUDY_TAG = "cxrstudy.tune_study"
TUNE_ROLE_TAG = "cxrstudy.tune_role"
FAKE_TAG = "cxrstudy.fake"  # benchmark runs made by benchmarks/make_fake_comparisons.py
CONSTANT_MODEL_TAG = "cxrstudy.constant_model"  # "true" when a model predicts one class on validation
FAILED_REASON_TAG = "cxrstudy.failed_reason"
CLAIM_HOLDER_TAG = "cxrstudy.claim_holder"  # on a claim (tracking/claims.py): who holds it (JSON)
CLAIM_HEARTBEAT_TAG = "cxrstudy.claim_heartbeat"  # on a claim: when its holder last said it is alive (epoch s)

# --- Optuna study/trial attributes ----------------------------------------------------------
TUNE_SPEC_ATTR = "cxrstudy.spec"
TUNE_SURPLUS_ATTR = "cxrstudy.surplus"
TUNE_ERROR_ATTR = "cxrstudy.error"
TUNE_HEARTBEAT_ATTR = "cxrstudy:heartbeat"
TUNE_PARENT_ATTR = "mlflow_parent_run_id"  # on the study: the run id of its MLflow parent run
TUNE_RUN_ID_ATTR = "mlflow_run_id"  # on a trial: the id of its MLflow run

# --- entry points, as tagged -----------------------------------------------------------------
ENTRY_PREPROCESS = "preprocess"
ENTRY_TRAIN = "train"
ENTRY_EVALUATE = "evaluate"
ENTRY_COMPARE = "compare"
ENTRY_PROBE = "probe"
ENTRY_NOISE_FLOOR = "noise_floor"  # an A/A comparison: one configuration, two disjoint seed sets
ENTRY_MAIN = "main"
ENTRY_ANALYZE = "analyze"
ENTRY_TUNE = "tune"
ENTRY_TUNE_TRIAL = "tune_trial"
ENTRY_BENCHMARK = "benchmark"
ENTRY_ADVISE = "advise"

# --- the two arms of a comparison ------------------------------------------------------------
ARM_SINGLE = "single"  # the base hospital alone
ARM_PAIR = "pair"  # the base hospital plus the added one
ARMS = (ARM_SINGLE, ARM_PAIR)

# --- metric prefixes -------------------------------------------------------------------------
VAL_PREFIX = "val/"
TEST_PREFIX = "test/"
COMPARE_PREFIX = "compare/"
NOISE_FLOOR_PREFIX = "noise_floor/"
PROBE_PREFIX = "probe/"
ANALYSIS_PREFIX = "analysis/"
# what a comparison run logs under COMPARE_PREFIX (analysis reads exactly these)
COMPARE_METRICS = ("wga_single", "wga_pair", "delta_wga", "delta_ci_low", "delta_ci_high", "hurt", "n_seeds",
                   "worst_group_n_single", "worst_group_n_pair", "n_constant_models", "n_unconverged_models",
                   # the seed-aware CI's two sources: test sampling alone, and the spread over seeds
                   "delta_patient_ci_low", "delta_patient_ci_high", "delta_seed_sd", "seeds_same_sign",
                   # a balanced setting: its two-hospital model against the unbalanced one (hypothesis 2)
                   "balanced_minus_pair", "balanced_minus_pair_ci_low", "balanced_minus_pair_ci_high")
# also under COMPARE_PREFIX: each arm's WGA over the base hospital's groups and over the added one's
PER_HOSPITAL_WGA = ("wga_single_base", "wga_single_added", "wga_pair_base", "wga_pair_added")
# logged on a synthetic comparison at strength s when the study also ran strength 0: the
# shortcut-attributable change delta(s) - delta(0), with its paired patient-bootstrap CI
ATTRIBUTABLE_METRICS = ("attributable_delta", "attributable_ci_low", "attributable_ci_high")


def compare_metric(name: str) -> str:
    """The MLflow key of one comparison metric (``compare/<name>``)."""
    return COMPARE_PREFIX + name

# what an A/A comparison logs under NOISE_FLOOR_PREFIX (analysis reads exactly these)
NOISE_FLOOR_METRICS = ("delta_wga", "delta_ci_low", "delta_ci_high", "significant", "n_seeds", "delta_seed_sd",
                       "n_constant_models", "n_unconverged_models")


def significance(ci_low: float, ci_high: float) -> int:
    """The study's one rule for a significant change: -1 when the whole (seed-aware) 95% CI is below
    0, +1 when it is above 0, 0 otherwise (a missing bound is not significant)."""
    if ci_high < 0:
        return -1
    if ci_low > 0:
        return 1
    return 0
