"""This process's share of a tune study: open or join the study, find (or become) its MLflow
parent run, run trials until the study has ``n_trials`` finished ones, and re-queue the trials
that fail or whose process died (the sharing rules: :mod:`cxrstudy.runs.tune`)."""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from cxrstudy.errors import CxrStudyError, DataError, UsageError
from cxrstudy.runs.tune_trial import ObjectiveTracker, no_run_links, trial_run
from cxrstudy.tracking import keys
from cxrstudy.train.config import TrainConfig
from cxrstudy.tune.settings import TuneSettings
from cxrstudy.tune.storage import open_storage


class TrialsKeepFailing(CxrStudyError):
    """Trials fail one after another in this process: stop instead of burning the budget."""


class _SurplusTrial(Exception):
    pass


def say(msg: str) -> None:
    print(f"[tune] {msg}", flush=True)


def fmt_values(values: dict) -> str:
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
        pid = None if founder else self._wait_for_attr(study, keys.TUNE_PARENT_ATTR, timeout=60)
        if pid is not None and pid != my_run_id:
            try:
                run = self.client.get_run(pid)
                usable = run.info.lifecycle_stage == "active"
            except Exception:
                usable = False
            if usable:
                self.parent_run_id, self.experiment_id = pid, run.info.experiment_id
                return False
            say(f"the study's parent run {pid} is not in this MLflow store; this run becomes the parent")
        study.set_user_attr(keys.TUNE_PARENT_ATTR, my_run_id)
        self.parent_run_id = my_run_id
        self.experiment_id = self.client.get_run(my_run_id).info.experiment_id
        return True

    # -- retry -----------------------------------------------------------------------------
    def retry(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Re-queue a failed trial's parameters as a new trial (Optuna's retry callback)."""
        history = frozen.system_attrs.get("retry_history", [])
        if len(history) >= self.s.max_retry:
            say(f"trial {frozen.number}: not retried (its parameters already failed {len(history) + 1} times)")
            return
        clean = copy.deepcopy(frozen)
        clean.user_attrs = {}
        clean.system_attrs = {k: v for k, v in frozen.system_attrs.items() if k != keys.TUNE_HEARTBEAT_ATTR}
        retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
            optuna.storages.RetryFailedTrialCallback
        retry_cls(max_retry=self.s.max_retry)(study, clean)
        say(f"trial {frozen.number}: re-queued with the same parameters "
             f"(retry {len(history) + 1} of {self.s.max_retry})")

    def on_stale(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Storage callback: a trial's process stopped beating (killed, preempted) and is now FAIL."""
        rid = frozen.user_attrs.get(keys.TUNE_RUN_ID_ATTR)
        say(f"trial {frozen.number}: its process stopped (no heartbeat for {self.s.grace_period} s); marked FAIL")
        if rid:
            try:
                self.client.set_tag(rid, "optuna.trial_state", "FAIL")
                self.client.set_tag(rid, keys.TUNE_ERROR_ATTR, "its process stopped (no heartbeat)")
                with no_run_links():
                    self.client.set_terminated(rid, "FAILED")
            except Exception as e:  # the run may be in another MLflow store
                say(f"could not mark run {rid} FAILED: {e}")
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
                    say(f"a trial of this process was declared dead by another process ({e}); continuing")
                if self.failures_in_a_row > self.s.max_retry:
                    raise TrialsKeepFailing(f"{self.failures_in_a_row} trials in a row failed in this process; "
                                            f"last error: {self.last_error}")
                continue
            if not waiting_said:
                say(f"{c[TrialState.RUNNING]} trial(s) still running in other processes; waiting for them "
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
        say(f"trial {trial.number}: {fmt_values(values)}{again}")
        try:
            with trial_run(self.client, self.experiment_id, self.parent_run_id,
                           f"trial-{trial.number:03d}", tags) as rid:
                trial.set_user_attr(keys.TUNE_RUN_ID_ATTR, rid)
                value, step = self._train(trial, cfg, values, rid)
        except optuna.TrialPruned as e:
            say(f"trial {trial.number}: PRUNED ({e}) [{time.perf_counter() - t0:.1f} s]")
            raise
        except KeyboardInterrupt:
            # the trial ends FAIL; queue its parameters so that the next run of the study retries them
            self.retry(study, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number))
            raise
        except Exception as e:
            trial.set_user_attr(keys.TUNE_ERROR_ATTR, repr(e)[:2000])
            say(f"trial {trial.number}: FAILED: {e!r}")
            raise
        best = _best_so_far(study, value, trial.number)
        say(f"trial {trial.number}: {s.objective}={value:.4f} (step {step}); best {best[0]:.4f} (trial {best[1]}) "
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
    differ = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {a.get(k)} vs {b.get(k)}" for k in differ)[:400]
