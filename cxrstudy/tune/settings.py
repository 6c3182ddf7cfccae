"""tune's parameters and what they resolve to: validated once, before any work (one clear line
per bad value), into a :class:`TuneSettings` that names the study (trials of different settings
never mix)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from cxrstudy.errors import UsageError
from cxrstudy.labels import label_key
from cxrstudy.params import as_choice, as_int, optional
from cxrstudy.train.config import TRAIN_PARAMS, TrainConfig, config_from_params
from cxrstudy.train.methods import get_method
from cxrstudy.tune.space import SEARCHED, SearchSpace, parse_range
from cxrstudy.tune.storage import StorageSpec, parse_storage

OBJECTIVES = {"val_macro_f1": "macro_f1", "val_wga": "wga"}
PRUNERS = ("median", "none")

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
