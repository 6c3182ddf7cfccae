"""The resolved configuration of one training run, its parameters and its content hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields

from cxrstudy.data.dataspec import DATA_PARAMS, DataSpec, spec_from_params
from cxrstudy.errors import UsageError
from cxrstudy.hospitals import HOSPITALS, parse_envs
from cxrstudy.labels import canonical_label, label_key
from cxrstudy.params import as_bool, as_choice, as_float, as_int, given, optional
from cxrstudy.train.balancing import BALANCE_MODES, BALANCE_NONE, BALANCE_SIZE_MATCHED, parse_balance
from cxrstudy.train.models import BACKBONES, normalise_pretrained
from cxrstudy.train.methods import DEFAULT_METHOD, all_hparam_names, get_method, method_suffix, parse_hparams
from cxrstudy.train.presets import resolve_preset

#: train's entry-point parameters; empty values take the preset's
TRAIN_PARAMS = {
    "envs": "cxp,nih",
    "label": "Effusion",
    "seed": "0",
    "balance": BALANCE_NONE,
    "preset": "auto",
    "backbone": "",
    "pretrained": "",
    "image_size": "",
    "lr": "",
    "weight_decay": "",
    "batch_size": "",
    "max_steps": "",
    "eval_every": "",
    "patience": "",
    "augment_strength": "",
    "method": DEFAULT_METHOD,
    **{name: "" for name in all_hparam_names()},
    "device": "auto",
    "force": "false",
    "parent_run_id": "",
    **DATA_PARAMS,
}

CONFIG_VERSION = 2
#: how many hex digits of the data fingerprint a registered model's name carries
DATA_NAME_DIGITS = 8


def normalise_envs(envs, balance: str) -> tuple[str, ...]:
    """Equal-share training is symmetric in the hospitals, so cxp,nih == nih,cxp; the
    size-matched variant keeps its first (base) hospital first."""
    envs = list(envs)
    order = sorted(envs, key=HOSPITALS.index)
    if balance == BALANCE_SIZE_MATCHED:
        return (envs[0],) + tuple(e for e in order if e != envs[0])
    return tuple(order)


@dataclass(frozen=True)
class TrainConfig:
    envs: tuple
    label: str
    data: DataSpec
    seed: int = 0
    balance: str = BALANCE_NONE
    preset: str = "cpu"
    backbone: str = "stridecnn"
    pretrained: str = "none"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_steps: int = 600
    eval_every: int = 50
    patience: int = 5
    #: 1 = the paper's augmentation (flip, rotation up to 10 degrees, crop area 0.75..1), 0 = none
    augment_strength: float = 1.0
    #: the training method (cxrstudy.train.methods); erm = the paper's plain cross-entropy
    method: str = DEFAULT_METHOD
    #: the method's hyperparameters, every one resolved (defaults filled), as sorted (name, value) pairs
    method_hparams: tuple = ()

    def __post_init__(self):
        if self.balance not in BALANCE_MODES:
            raise UsageError(f"unknown balance {self.balance!r}; expected one of: {', '.join(BALANCE_MODES)}")
        if self.balance != BALANCE_NONE and len(self.envs) < 2:
            raise UsageError(f"balance={self.balance} needs at least two training hospitals; got {','.join(self.envs)}")
        if self.backbone not in BACKBONES:
            raise UsageError(f"unknown backbone {self.backbone!r}; expected one of: {', '.join(BACKBONES)}")
        get_method(self.method)  # unknown method: UsageError
        if self.batch_size < len(self.envs):
            raise UsageError(f"batch_size {self.batch_size} is smaller than the number of hospitals {len(self.envs)}")

    @property
    def image_size(self) -> int:
        return self.data.image_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["envs"] = list(self.envs)
        d["data"] = self.data.to_dict()
        return d

    def to_log_dict(self) -> dict:
        """:meth:`to_dict` as runs log it: the data without paths (``DataSpec.to_log_dict``)."""
        return {**self.to_dict(), "data": self.data.to_log_dict()}

    def identity(self) -> dict:
        """Everything that determines the trained model, as hashed by :meth:`content_hash`.

        One rule for the fields: a field at its default value is left out (so adding a field with a
        default keeps every existing hash), and the preset's name never counts (only its values do).
        The data counts twice: what was asked for (``DataSpec.to_dict``) and the fingerprint of what
        is there now (``DataSpec.fingerprint``), so changed files or a new renderer mean retraining.
        """
        d = {}
        for f in fields(self):
            if f.name in ("preset", "data"):
                continue
            v = getattr(self, f.name)
            if f.default is not MISSING and v == f.default:
                continue
            d[f.name] = list(v) if isinstance(v, tuple) else v
        d["data"] = self.data.to_dict()
        d["data_fingerprint"] = self.data_fingerprint()
        d["version"] = CONFIG_VERSION
        return d

    def data_fingerprint(self) -> str:
        return self.data.fingerprint(self.envs)

    def content_hash(self) -> str:
        """The training run's identity (tag ``cxrstudy.config_hash``): a hash of :meth:`identity`."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def legacy_hash(self) -> str | None:
        """The hash that runs trained before the data fingerprint joined the identity were tagged
        with (config version 1). Such a run is reused only when the cache keys of the data it logged
        as inputs equal today's (``runs.train.find_trained``); otherwise the model is retrained.
        ``None`` for a method other than ERM: version 1 had no other."""
        if self.method != DEFAULT_METHOD:
            return None
        d = self.to_dict()
        d.pop("preset")
        d.pop("method"), d.pop("method_hparams")  # version 1 knew ERM only
        if d["augment_strength"] == 1.0:
            d.pop("augment_strength")
        d["version"] = 1
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def hparams(self) -> dict:
        """The method's hyperparameters as a dict."""
        return dict(self.method_hparams)

    def model_name(self) -> str:
        """Registry name: cxrstudy-<source>-<envs>-<label>-<balance>-d<data>, then -<method> unless it
        is erm. ``<data>`` is the start of the data fingerprint (:meth:`data_fingerprint`), so one name
        holds models trained on one dataset only: its aliases (``best``, ``seed<k>``) and ``@latest``
        never mix, say, a synthetic shortcut strength with another (models registered under the
        names from before keep them and stay resolvable by those)."""
        name = (f"cxrstudy-{self.data.source}-{'-'.join(self.envs)}-{label_key(self.label)}-{self.balance}"
                f"-d{self.data_fingerprint()[:DATA_NAME_DIGITS]}")
        return name + method_suffix(self.method)


def config_from_params(raw: dict) -> TrainConfig:
    """Validate raw entry-point parameters (strings) into a TrainConfig; the preset fills blanks."""
    preset_name, preset = resolve_preset(raw.get("preset", "auto"))

    def pick(name):  # only a blank value takes the preset's: an explicit `none` wins (pretrained=none)
        v = given(raw.get(name, ""))
        return preset[name] if v is None else v

    balance = parse_balance(raw.get("balance", BALANCE_NONE))
    envs = normalise_envs(parse_envs(raw["envs"]), balance)
    label = canonical_label(raw["label"])
    image_size = as_int("image_size", pick("image_size"), lo=16, hi=1024)
    return TrainConfig(
        envs=envs,
        label=label,
        data=spec_from_params(raw, image_size),
        seed=as_int("seed", raw.get("seed", 0), lo=0),
        balance=balance,
        preset=preset_name,
        backbone=as_choice("backbone", pick("backbone"), BACKBONES),
        pretrained=normalise_pretrained(pick("pretrained")),
        lr=as_float("lr", pick("lr"), hi=10.0, gt=0.0),
        weight_decay=as_float("weight_decay", pick("weight_decay"), lo=0.0, hi=10.0),
        batch_size=as_int("batch_size", pick("batch_size"), lo=1, hi=65536),
        max_steps=as_int("max_steps", pick("max_steps"), lo=1),
        eval_every=as_int("eval_every", pick("eval_every"), lo=1),
        patience=as_int("patience", pick("patience"), lo=1),
        augment_strength=as_float("augment_strength", pick("augment_strength"), lo=0.0, hi=3.0),
        **method_from_params(raw),
    )


def with_method(cfg: TrainConfig, method: str, raw: dict | None = None) -> TrainConfig:
    """``cfg`` trained with ``method`` instead: its hyperparameters are those given in ``raw``
    (names of that method only; others are ignored here) and the defaults for the rest."""
    method = get_method(method).name
    if method == cfg.method and not raw:
        return cfg
    own = {k: v for k, v in (raw or {}).items() if k in get_method(method).HPARAMS and optional(v)}
    return dataclasses.replace(cfg, method=method, method_hparams=tuple(sorted(parse_hparams(method, own).items())))


def for_method(raw: dict, method: str) -> dict:
    """``raw`` with the hyperparameters of every other method blanked. In a study of several methods
    (``main -P methods=erm,groupdro -P groupdro_eta=0.1``) each method takes its own: the template
    of ``method`` is built from this, and :func:`with_method` gives every other method its values."""
    mine = get_method(method).HPARAMS
    return {k: ("" if k in all_hparam_names() and k not in mine else v) for k, v in raw.items()}


def method_from_params(raw: dict) -> dict:
    """``method`` and ``method_hparams`` from raw parameters: a hyperparameter of another method,
    an unknown one or one out of its range is a one-line UsageError."""
    method = get_method(raw.get("method", DEFAULT_METHOD) or DEFAULT_METHOD).name
    given = {k: raw[k] for k in all_hparam_names() if optional(raw.get(k, ""))}
    hp = parse_hparams(method, given)
    return {"method": method, "method_hparams": tuple(sorted(hp.items()))}


def force_from_params(raw: dict) -> bool:
    return as_bool("force", raw.get("force", "false"))


def config_to_params(cfg: TrainConfig) -> dict[str, str]:
    """train entry-point parameters that reproduce ``cfg`` exactly (for subprocesses and jobs)."""
    d = cfg.data
    out = {
        "envs": ",".join(cfg.envs), "label": cfg.label, "seed": str(cfg.seed), "balance": cfg.balance,
        "preset": cfg.preset, "backbone": cfg.backbone, "pretrained": cfg.pretrained,
        "image_size": str(d.image_size), "lr": repr(cfg.lr), "weight_decay": repr(cfg.weight_decay),
        "batch_size": str(cfg.batch_size), "max_steps": str(cfg.max_steps), "eval_every": str(cfg.eval_every),
        "patience": str(cfg.patience), "augment_strength": repr(cfg.augment_strength),
        "method": cfg.method, **{k: repr(v) for k, v in cfg.method_hparams},
        "source": d.source, "data_root": d.data_root or "",
        "roots": ",".join(f"{e}={p}" for e, p in d.roots), "cache_dir": d.cache_dir,
        "synthetic_patients": str(d.synthetic.n_patients), "shortcut_strength": repr(d.synthetic.shortcut_strength),
        "synthetic_seed": str(d.synthetic.seed),
    }
    return out
