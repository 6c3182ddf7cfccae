"""Hyperparameter search for one training setting: Optuna picks, every trial is an MLflow run.

The search covers learning rate, weight decay, batch size and augmentation strength (ranges are
parameters; a single value fixes one). Each trial trains with :func:`trainer.train_model` on data
prepared once per process, reports its objective at every validation to the median pruner, and
is logged as one MLflow run nested under the study's parent run. The objective is what ``train``
would deliver: ``val_macro_f1`` is the best validation macro-F1; ``val_wga`` is the validation WGA
of the checkpoint ``train`` keeps (the best-macro-F1 one). Both are maximised.

**Sharing a study.** Processes started with the same settings (on one machine or many) open the
same study in the same Optuna storage (``tune_storage.py``) and split its trials:

- ``n_trials`` is the study's target of finished (complete or pruned) trials, not a per-process
  count: before each new trial a process counts the finished, running and queued trials, and a
  trial that still finds ``n_trials`` ahead of it (two processes asked at the same instant) is
  dropped at once as FAIL with user attribute ``cxrstudy.surplus`` and no MLflow run.
- A process with nothing left to start waits for the other processes' running trials, so that
  one whose process dies is still retried: its heartbeat goes stale, any process of the study
  marks it FAIL, ends its MLflow run FAILED and re-queues its parameters as a new trial (Optuna's
  retry callback; ``max_retry`` times). A trial that raises is re-queued the same way; one
  interrupted with Ctrl-C is re-queued for the next run.
- **The parent run.** Creating a study is atomic in every Optuna storage, so exactly one process
  creates it. That process's run is the study's parent: it writes the run id to the study's user
  attribute ``mlflow_parent_run_id``. A process that finds the study already there waits for that
  attribute and nests every trial run under that parent; its own run (which ``mlflow run``
  always opens) becomes a ``worker`` run under the parent too. If the recorded parent is not in
  this MLflow store, the joining process's run takes its place.
- Whenever a process finishes, it logs the study's summary to the parent (``tune_report.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from cxrstudy.errors import CxrStudyError, DataError, UsageError
from cxrstudy.labels import label_key
from cxrstudy.params import as_choice, as_float, as_int, optional
from cxrstudy.tracking import keys
from cxrstudy.train.methods import default_hparams, get_method, search_space, suggest
from cxrstudy.train.config import TRAIN_PARAMS, TrainConfig, config_from_params
from cxrstudy.tune.storage import StorageSpec, open_storage, parse_storage

OBJECTIVES = {"val_macro_f1": "macro_f1", "val_wga": "wga"}
PRUNERS = ("median", "none")
SEARCHED = ("lr", "weight_decay", "batch_size", "augment_strength")

PARENT_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"

#: tune's entry-point parameters: the search, the study, then train's (fixed for every trial)
TUNE_PARAMS = {
    "envs": "cxp,nih",
    "label": "Effusion",
    "objective": "val_macro_f1",
    "n_trials": "20",
    "lr_range": "1e-5,1e-2",
    "weight_decay_range": "1e-6,1e-2",
    "batch_sizes": "32,64,128",
    "augment_range": "0,1.5",
    "storage": "",
    "study_name": "",
    "sampler_seed": "0",
    "pruner": "median",
    "heartbeat_interval": "30",
    "grace_period": "120",
    "max_retry": "2",
    **{k: v for k, v in TRAIN_PARAMS.items()
       if k not in ("envs", "label", *SEARCHED, "force", "parent_run_id")},
}


class TrialsKeepFailing(CxrStudyError):
    """Trials fail one after another in this process: stop instead of burning the budget."""


class _SurplusTrial(Exception):
    pass


# ----------------------------------------------------------------------------- search space

@dataclass(frozen=True)
class FloatRange:
    lo: float
    hi: float
    log: bool

    @property
    def fixed(self) -> bool:
        return self.lo == self.hi

    def describe(self) -> str:
        return f"{self.lo:g}" if self.fixed else f"{self.lo:g}..{self.hi:g}{' (log)' if self.log else ''}"


def parse_range(name: str, value, *, log: bool, lo: float, hi: float) -> FloatRange:
    """``"a,b"`` (a search range) or ``"a"`` (a fixed value), each within ``lo..hi``."""
    parts = [p for p in str(value).split(",") if p.strip()]
    if len(parts) not in (1, 2):
        raise UsageError(f"parameter {name}={value!r} is not a range; expected low,high (or one value to fix it)")
    a, b = (as_float(name, p) for p in (parts * 2)[:2])
    if not (lo <= a <= hi and lo <= b <= hi):
        raise UsageError(f"parameter {name}={value!r} is out of range; expected values within {lo:g}..{hi:g}")
    if a > b:
        raise UsageError(f"parameter {name}={value!r}: low {a:g} is above high {b:g}")
    if log and a != b and a <= 0:
        raise UsageError(f"parameter {name}={value!r}: a log-scale range needs low > 0 (e.g. 1e-6,{b:g}); "
                         "give one value, e.g. 0, to fix it instead")
    return FloatRange(a, b, log)


@dataclass(frozen=True)
class SearchSpace:
    lr: FloatRange
    weight_decay: FloatRange
    batch_sizes: tuple
    augment_strength: FloatRange
    #: the training method; its own hyperparameters are searched over the ranges it declares
    #: (cxrstudy.train.methods), except those given explicitly (``fixed_hparams``)
    method: str = "erm"
    fixed_hparams: tuple = ()

    def method_searched(self) -> list[str]:
        fixed = dict(self.fixed_hparams)
        return [k for k, hp in get_method(self.method).HPARAMS.items() if k not in fixed and hp.low != hp.high]

    def searched(self) -> list[str]:
        out = [n for n in ("lr", "weight_decay") if not getattr(self, n).fixed]
        if len(self.batch_sizes) > 1:
            out.append("batch_size")
        if not self.augment_strength.fixed:
            out.append("augment_strength")
        return out + self.method_searched()

    def method_hparams(self, params: dict) -> tuple:
        """The method's hyperparameters of a trial: searched ones from ``params``, the rest fixed or default."""
        hp = {**default_hparams(self.method), **dict(self.fixed_hparams)}
        hp.update({k: params[k] for k in self.method_searched() if k in params})
        return tuple(sorted(hp.items()))

    def suggest(self, trial: optuna.Trial) -> dict:
        """The trial's values of all four hyperparameters (fixed ones are not suggested)."""
        out = {}
        for name in ("lr", "weight_decay"):
            r = getattr(self, name)
            out[name] = r.lo if r.fixed else trial.suggest_float(name, r.lo, r.hi, log=r.log)
        bs = self.batch_sizes
        out["batch_size"] = bs[0] if len(bs) == 1 else int(trial.suggest_categorical("batch_size", list(bs)))
        a = self.augment_strength
        out["augment_strength"] = a.lo if a.fixed else trial.suggest_float("augment_strength", a.lo, a.hi)
        if self.method != "erm":
            searched = set(self.method_searched())
            suggested = suggest(search_space(self.method, only=searched), trial)
            out["method_hparams"] = self.method_hparams(suggested)
        return out

    def values(self, params: dict) -> dict:
        """A finished trial's values of all four (its suggested params plus the fixed ones)."""
        fixed = {"lr": self.lr.lo, "weight_decay": self.weight_decay.lo, "batch_size": self.batch_sizes[0],
                 "augment_strength": self.augment_strength.lo}
        out = {k: params.get(k, fixed[k]) for k in SEARCHED}
        if self.method != "erm":  # the method's own hyperparameters, as TrainConfig holds them
            out["method_hparams"] = self.method_hparams(params)
        return out

    def to_dict(self) -> dict:
        wd = self.weight_decay
        d = {"lr": [self.lr.lo, self.lr.hi, "log"], "weight_decay": [wd.lo, wd.hi, "log"],
             "batch_size": list(self.batch_sizes),
             "augment_strength": [self.augment_strength.lo, self.augment_strength.hi, "linear"]}
        if self.method != "erm":  # ERM's spec (and so its study names) as before methods existed
            hps = get_method(self.method).HPARAMS
            d["method"] = self.method
            d.update({k: [hps[k].low, hps[k].high, "log" if hps[k].log else "linear"] for k in self.method_searched()})
            d.update({k: [v, v, "fixed"] for k, v in self.fixed_hparams})
        return d

    def describe(self) -> str:
        bs = ",".join(map(str, self.batch_sizes))
        hps = get_method(self.method).HPARAMS
        extra = "".join(f", {k} {hps[k].low:g}..{hps[k].high:g}{' (log)' if hps[k].log else ''}"
                        for k in self.method_searched())
        return (f"lr {self.lr.describe()}, weight_decay {self.weight_decay.describe()}, "
                f"batch_size {{{bs}}}, augment_strength {self.augment_strength.describe()}{extra}")


# ----------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class TuneSettings:
    base: TrainConfig  # every trial's configuration, before its searched values are put in
    space: SearchSpace
    objective: str
    n_trials: int
    storage: StorageSpec
    study_name: str
    sampler_seed: int
    pruner: str
    heartbeat_interval: int
    grace_period: int
    max_retry: int
    device: str = "auto"

    def spec(self) -> dict:
        """What defines the study's objective function (trials of different specs don't mix)."""
        base = self.base.to_dict()
        for k in ("preset", *SEARCHED):
            base.pop(k, None)
        return {"objective": self.objective, "space": self.space.to_dict(), "base": base, "version": 1}


def default_study_name(base: TrainConfig, spec: dict) -> str:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"tune-{'+'.join(base.envs)}-{label_key(base.label)}-{spec['objective']}-{digest}"


def tune_from_params(raw: dict, tracking_uri: str) -> TuneSettings:
    """Validate tune's raw parameters (strings); every error is one line naming the parameter."""
    objective = as_choice("objective", raw.get("objective", "val_macro_f1"), tuple(OBJECTIVES))
    n_trials = as_int("n_trials", raw.get("n_trials", "20"), lo=1, hi=100000)
    space = SearchSpace(
        lr=parse_range("lr_range", raw.get("lr_range", TUNE_PARAMS["lr_range"]), log=True, lo=0.0, hi=10.0),
        weight_decay=parse_range("weight_decay_range", raw.get("weight_decay_range", TUNE_PARAMS["weight_decay_range"]),
                                 log=True, lo=0.0, hi=10.0),
        batch_sizes=tuple(sorted({as_int("batch_sizes", p, lo=1, hi=65536)
                                  for p in str(raw.get("batch_sizes", TUNE_PARAMS["batch_sizes"])).split(",")
                                  if p.strip()})),
        augment_strength=parse_range("augment_range", raw.get("augment_range", TUNE_PARAMS["augment_range"]),
                                     log=False, lo=0.0, hi=3.0),
    )
    if not space.batch_sizes:
        raise UsageError("parameter batch_sizes is empty; expected a comma list such as 32,64,128")
    train_raw = {**{k: v for k, v in TRAIN_PARAMS.items()}, **{k: v for k, v in raw.items() if k in TRAIN_PARAMS}}
    base = config_from_params({**train_raw, "lr": "", "weight_decay": "", "batch_size": "", "augment_strength": ""})
    given_hp = {k: v for k, v in train_raw.items() if k in get_method(base.method).HPARAMS and optional(v)}
    space = replace(space, method=base.method, fixed_hparams=tuple(sorted(
        {k: v for k, v in base.method_hparams if k in given_hp}.items())))
    for bs in space.batch_sizes:  # TrainConfig's own checks, e.g. one sample per hospital per batch
        replace(base, batch_size=bs)
    base = replace(base, **space.values({}))
    storage = parse_storage(raw.get("storage", ""), tracking_uri)
    hb = as_int("heartbeat_interval", raw.get("heartbeat_interval", "30"), lo=1, hi=3600)
    grace = as_int("grace_period", optional(raw.get("grace_period")) or str(4 * hb), lo=1, hi=86400)
    if grace <= hb:
        raise UsageError(f"parameter grace_period={grace} must be longer than heartbeat_interval={hb}")
    settings = TuneSettings(
        base=base, space=space, objective=objective, n_trials=n_trials, storage=storage, study_name="",
        sampler_seed=as_int("sampler_seed", raw.get("sampler_seed", "0"), lo=0),
        pruner=as_choice("pruner", raw.get("pruner", "median"), PRUNERS),
        heartbeat_interval=hb, grace_period=grace,
        max_retry=as_int("max_retry", raw.get("max_retry", "2"), lo=0, hi=100),
        device=str(raw.get("device", "auto")))
    name = optional(raw.get("study_name")) or default_study_name(base, settings.spec())
    return replace(settings, study_name=name)


# ----------------------------------------------------------------------------- one trial

class ObjectiveTracker:
    """The objective as ``train`` would deliver it if training stopped now: the best macro-F1, or
    the WGA at the best-macro-F1 validation (``train`` keeps that checkpoint)."""

    def __init__(self, objective: str):
        self.key = OBJECTIVES[objective]
        self.best_f1 = -math.inf
        self.value: float | None = None
        self.step: int | None = None

    def update(self, step: int, metrics: dict) -> float:
        if metrics["macro_f1"] > self.best_f1:
            self.best_f1, self.value, self.step = metrics["macro_f1"], float(metrics[self.key]), step
        return self.value


@contextmanager
def trial_run(client, experiment_id: str, parent_run_id: str, run_name: str, tags: dict):
    """An MLflow run for one trial, nested under the study's parent; its end state follows the trial's."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, MLFLOW_PARENT_RUN_ID: parent_run_id})
    rid = run.info.run_id

    def end(state: str, status: str, error: str | None = None):
        client.set_tag(rid, "optuna.trial_state", state)
        if error:
            client.set_tag(rid, keys.TUNE_ERROR_ATTR, error[:5000])
        with _no_run_links():
            client.set_terminated(rid, status)

    try:
        yield rid
    except optuna.TrialPruned as e:
        end("PRUNED", "FINISHED", str(e) or None)
        raise
    except KeyboardInterrupt:
        end("FAIL", "KILLED", "interrupted")
        raise
    except BaseException as e:
        end("FAIL", "FAILED", repr(e))
        raise
    else:
        end("COMPLETE", "FINISHED")


@contextmanager
def _no_run_links():
    """MLflow prints two 'View run' links whenever a run on a server ends: not for every trial."""
    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    old = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _say(msg: str) -> None:
    print(f"[tune] {msg}", flush=True)


def _fmt(values: dict) -> str:
    return (f"lr={values['lr']:.3g} weight_decay={values['weight_decay']:.3g} batch_size={values['batch_size']} "
            f"augment_strength={values['augment_strength']:.2f}")


class StudyWorker:
    """This process's share of a study: runs trials until the study has ``n_trials`` finished."""

    def __init__(self, settings: TuneSettings, *, device, client, pruner=None):
        self.s = settings
        self.device = device
        self.client = client
        self.pruner = pruner
        self.data = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.failures_in_a_row = 0
        self.last_error: str | None = None
        self.ran: list[int] = []  # trial numbers this process ran (finished)

    # -- study and storage -----------------------------------------------------------------
    def open_study(self) -> tuple[optuna.Study, bool]:
        """Create the study (``True``: this process is its founder) or load the existing one."""
        s = self.s
        pruner = self.pruner or (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=s.base.eval_every + 1)
                                 if s.pruner == "median" else optuna.pruners.NopPruner())

        def sampler(seed):
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                              n_startup_trials=min(10, max(2, s.n_trials // 4)))

        try:
            storage = open_storage(s.storage, heartbeat_interval=s.heartbeat_interval, grace_period=s.grace_period,
                                   on_stale=self.on_stale)
            try:
                # a single process on a fresh study is reproducible (sampler_seed); a joining process
                # draws its own seed, or it would propose the founder's first points again
                study = optuna.create_study(storage=storage, study_name=s.study_name, direction="maximize",
                                            sampler=sampler(s.sampler_seed), pruner=pruner, load_if_exists=False)
                study.set_user_attr(keys.TUNE_SPEC_ATTR, s.spec())
                return study, True
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(study_name=s.study_name, storage=storage, sampler=sampler(None),
                                          pruner=pruner)
        except CxrStudyError:
            raise
        except Exception as e:  # an unreachable database, an unreadable journal file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"cannot open the Optuna storage {s.storage.display()}: {s.storage.scrub(first)}") \
                from None
        spec = self._wait_for_attr(study, keys.TUNE_SPEC_ATTR, timeout=30)
        if spec is None:
            study.set_user_attr(keys.TUNE_SPEC_ATTR, s.spec())
        elif spec != json.loads(json.dumps(s.spec())):
            raise UsageError(f"study {s.study_name!r} in {s.storage.display()} was created with other settings "
                             f"({_spec_diff(spec, s.spec())}); choose another study_name or leave it empty")
        return study, False

    @staticmethod
    def _wait_for_attr(study: optuna.Study, key: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            v = study.user_attrs.get(key)
            if v is not None or time.monotonic() > deadline:
                return v
            time.sleep(0.2)

    def claim_parent(self, study: optuna.Study, my_run_id: str, founder: bool) -> bool:
        """Set ``self.parent_run_id``; ``True`` when this process's run is the study's parent."""
        pid = None if founder else self._wait_for_attr(study, PARENT_ATTR, timeout=60)
        if pid is not None and pid != my_run_id:
            try:
                run = self.client.get_run(pid)
                usable = run.info.lifecycle_stage == "active"
            except Exception:
                usable = False
            if usable:
                self.parent_run_id, self.experiment_id = pid, run.info.experiment_id
                return False
            _say(f"the study's parent run {pid} is not in this MLflow store; this run becomes the parent")
        study.set_user_attr(PARENT_ATTR, my_run_id)
        self.parent_run_id = my_run_id
        self.experiment_id = self.client.get_run(my_run_id).info.experiment_id
        return True

    # -- retry -----------------------------------------------------------------------------
    def retry(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Re-queue a failed trial's parameters as a new trial (Optuna's retry callback)."""
        history = frozen.system_attrs.get("retry_history", [])
        if len(history) >= self.s.max_retry:
            _say(f"trial {frozen.number}: not retried (its parameters already failed {len(history) + 1} times)")
            return
        clean = copy.deepcopy(frozen)
        clean.user_attrs = {}
        clean.system_attrs = {k: v for k, v in frozen.system_attrs.items() if k != keys.TUNE_HEARTBEAT_ATTR}
        retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
            optuna.storages.RetryFailedTrialCallback
        retry_cls(max_retry=self.s.max_retry)(study, clean)
        _say(f"trial {frozen.number}: re-queued with the same parameters "
             f"(retry {len(history) + 1} of {self.s.max_retry})")

    def on_stale(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Storage callback: a trial's process stopped beating (killed, preempted) and is now FAIL."""
        rid = frozen.user_attrs.get(RUN_ID_ATTR)
        _say(f"trial {frozen.number}: its process stopped (no heartbeat for {self.s.grace_period} s); marked FAIL")
        if rid:
            try:
                self.client.set_tag(rid, "optuna.trial_state", "FAIL")
                self.client.set_tag(rid, keys.TUNE_ERROR_ATTR, "its process stopped (no heartbeat)")
                with _no_run_links():
                    self.client.set_terminated(rid, "FAILED")
            except Exception as e:  # the run may be in another MLflow store
                _say(f"could not mark run {rid} FAILED: {e}")
        self.retry(study, frozen)

    # -- the loop --------------------------------------------------------------------------
    def counts(self, study: optuna.Study) -> Counter:
        return Counter(t.state for t in study.get_trials(deepcopy=False))

    def _enough(self, c: Counter) -> bool:
        """Nothing more to start: finished + running reach the target and nothing is queued."""
        return c[TrialState.WAITING] == 0 and \
            c[TrialState.COMPLETE] + c[TrialState.PRUNED] + c[TrialState.RUNNING] >= self.s.n_trials

    def after_trial(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.state == TrialState.FAIL and frozen.user_attrs.get(keys.TUNE_SURPLUS_ATTR):
            study.stop()
            return
        if frozen.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            self.last_error = frozen.user_attrs.get(keys.TUNE_ERROR_ATTR, "unknown error")
            self.retry(study, frozen)
            if self.failures_in_a_row > self.s.max_retry:
                study.stop()
                return
        else:
            self.failures_in_a_row = 0
            self.ran.append(frozen.number)
        if self._enough(self.counts(study)):
            study.stop()

    def work(self, study: optuna.Study, data) -> None:
        """Run trials until the study has ``n_trials`` finished ones (waiting for other processes'
        running trials at the end, so that a dead one is retried rather than lost)."""
        from optuna.storages import fail_stale_trials

        self.data = data
        waiting_said = False
        while True:
            fail_stale_trials(study)
            c = self.counts(study)
            finished = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
            if finished >= self.s.n_trials:
                return
            if not self._enough(c):
                waiting_said = False
                try:
                    study.optimize(self.objective, callbacks=[self.after_trial], catch=(Exception,),
                                   gc_after_trial=False, show_progress_bar=False)
                except optuna.exceptions.UpdateFinishedTrialError as e:
                    _say(f"a trial of this process was declared dead by another process ({e}); continuing")
                if self.failures_in_a_row > self.s.max_retry:
                    raise TrialsKeepFailing(f"{self.failures_in_a_row} trials in a row failed in this process; "
                                            f"last error: {self.last_error}")
                continue
            if not waiting_said:
                _say(f"{c[TrialState.RUNNING]} trial(s) still running in other processes; waiting for them "
                     f"(one whose process died is retried here after {self.s.grace_period} s without heartbeat)")
                waiting_said = True
            time.sleep(min(5.0, self.s.heartbeat_interval))

    def _is_surplus(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        ahead = sum(1 for t in study.get_trials(deepcopy=False)
                    if t.number < trial.number and t.state != TrialState.FAIL)
        return ahead >= self.s.n_trials

    def objective(self, trial: optuna.Trial) -> float:
        s = self.s
        study = trial.study
        if self._is_surplus(study, trial):
            trial.set_user_attr(keys.TUNE_SURPLUS_ATTR, True)
            raise _SurplusTrial(f"surplus trial: the study already has {s.n_trials} trials finished or running "
                                "(another process started one at the same moment); not run")
        values = s.space.suggest(trial)
        cfg = replace(s.base, **values)
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        retry_of = frozen.system_attrs.get("failed_trial")
        tags = {keys.ENTRY_TAG: keys.ENTRY_TUNE_TRIAL, keys.TUNE_STUDY_TAG: s.study_name, "optuna.study_name": s.study_name,
                "optuna.trial_number": str(trial.number), keys.SYNTHETIC_TAG: str(cfg.data.is_synthetic).lower(),
                "envs": ",".join(cfg.envs), "label": cfg.label}
        if retry_of is not None:
            tags["optuna.retry_of"] = str(retry_of)
        t0 = time.perf_counter()
        again = f" (retry of trial {retry_of})" if retry_of is not None else ""
        _say(f"trial {trial.number}: {_fmt(values)}{again}")
        try:
            with trial_run(self.client, self.experiment_id, self.parent_run_id,
                           f"trial-{trial.number:03d}", tags) as rid:
                trial.set_user_attr(RUN_ID_ATTR, rid)
                value, step = self._train(trial, cfg, values, rid)
        except optuna.TrialPruned as e:
            _say(f"trial {trial.number}: PRUNED ({e}) [{time.perf_counter() - t0:.1f} s]")
            raise
        except KeyboardInterrupt:
            # the trial ends FAIL; queue its parameters so that the next run of the study retries them
            self.retry(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))
            raise
        except Exception as e:
            trial.set_user_attr(keys.TUNE_ERROR_ATTR, repr(e)[:2000])
            _say(f"trial {trial.number}: FAILED: {e!r}")
            raise
        best = _best_so_far(study, value, trial.number)
        _say(f"trial {trial.number}: {s.objective}={value:.4f} (step {step}); best {best[0]:.4f} (trial {best[1]}) "
             f"[{time.perf_counter() - t0:.1f} s]")
        return value

    def _train(self, trial: optuna.Trial, cfg: TrainConfig, values: dict, rid: str) -> tuple[float, int]:
        from mlflow.entities import Metric, Param

        from cxrstudy.train.loop import train_model, validation_metrics

        client = self.client

        def now() -> int:
            return int(time.time() * 1000)

        cfg_params = {f"cfg.{k}": (json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v))[:6000]
                      for k, v in cfg.to_log_dict().items()}
        params = {**{k: str(v) for k, v in values.items()}, "optuna.trial_number": str(trial.number),
                  **cfg_params, "cfg.config_hash": cfg.content_hash(), "cfg.device": str(self.device)}
        client.log_batch(rid, params=[Param(k, v) for k, v in params.items()])
        tracker = ObjectiveTracker(self.s.objective)

        def on_eval(step: int, m: dict) -> None:
            value = tracker.update(step, m)
            ms = validation_metrics(m) | {"tune/objective": value}
            client.log_batch(rid, metrics=[Metric(k, float(v), now(), step) for k, v in ms.items()])
            trial.report(value, step)
            if step < cfg.max_steps and trial.should_prune():  # at the last step there is nothing left to save
                raise optuna.TrialPruned(f"at step {step}: {self.s.objective} {value:.4f} below the median")

        with tempfile.TemporaryDirectory(prefix=f"cxrstudy-tune-{trial.number}-") as ck:
            out = train_model(cfg, self.data, device=self.device, checkpoint_dir=Path(ck), on_eval=on_eval,
                              progress=False)
        final = {"tune/objective": tracker.value, **out.metrics()}
        client.log_batch(rid, metrics=[Metric(k, float(v), now(), 0) for k, v in final.items()])
        return tracker.value, tracker.step


def _best_so_far(study: optuna.Study, value: float, number: int) -> tuple[float, int]:
    done = [(t.value, t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(done + [(value, number)], key=lambda x: (x[0], -x[1]))


def _spec_diff(a: dict, b: dict) -> str:
    b = json.loads(json.dumps(b))
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in keys)[:400]


# ----------------------------------------------------------------------------- the entry

def run_tune(settings: TuneSettings, *, pruner=None, progress: bool = True) -> dict:
    """Run (or join, or resume) the study; returns a summary dict (see ``tune_report.log_summary``)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cxrstudy.runs.train import preflight
    from cxrstudy.tracking import runs as tracking
    from cxrstudy.train.device import pick_device
    from cxrstudy.train.loop import prepare_data
    from cxrstudy.tune.report import log_summary

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = settings
    device = pick_device(s.device)
    preflight(s.base)  # cache_dir writable, pretrained weights loadable: before any work
    tracking.setup()
    client = MlflowClient()
    worker = StudyWorker(s, device=device, client=client, pruner=pruner)
    study, founder = worker.open_study()
    with tracking.run(run_name=f"tune-{s.study_name}", tags={keys.ENTRY_TAG: keys.ENTRY_TUNE, keys.TUNE_STUDY_TAG: s.study_name}) as run:
        is_parent = worker.claim_parent(study, run.info.run_id, founder)
        mlflow.set_tag(keys.TUNE_ROLE_TAG, "study" if is_parent else "worker")
        if not is_parent:
            mlflow.set_tag("mlflow.parentRunId", worker.parent_run_id)
        tracking.mark_synthetic(s.base.data.is_synthetic)
        tracking.log_params({"objective": s.objective, "n_trials": s.n_trials, "study_name": s.study_name,
                             "storage": s.storage.display(), "space": s.space.to_dict(), "pruner": s.pruner,
                             "max_retry": s.max_retry, "heartbeat_interval": s.heartbeat_interval,
                             "grace_period": s.grace_period}, prefix="tune.")
        tracking.log_params({k: v for k, v in s.base.to_log_dict().items() if k not in SEARCHED}, prefix="cfg.")
        c = worker.counts(study)
        _say(f"study {s.study_name} in {s.storage.display()}: target {s.n_trials} finished trials, "
             f"{c[TrialState.COMPLETE] + c[TrialState.PRUNED]} already finished, objective {s.objective} (maximised)")
        _say(f"search: {s.space.describe()}")
        _say(f"MLflow: trials nest under run {worker.parent_run_id}"
             + (" (this process's run)" if is_parent else " (another process's run; this one is a worker)"))
        data = prepare_data(s.base, progress=progress)
        worker.work(study, data)
        mlflow.log_metric("tune/trials_run_here", len(worker.ran))
        summary = log_summary(client, worker.parent_run_id, study, s, parent_is_active=is_parent)
    summary.update(parent_run_id=worker.parent_run_id, role="study" if is_parent else "worker",
                   trials_run_here=list(worker.ran))
    if summary.get("command"):
        print("best configuration, as a train run:\n  " + summary["command"], flush=True)
    _say(f"done: {summary['n_complete']} complete, {summary['n_pruned']} pruned, {summary['n_failed']} failed "
         f"trials in study {s.study_name}")
    return summary
