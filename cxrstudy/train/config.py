"""The resolved configuration of one training run, its parameters and its content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields

from cxrstudy.data.dataspec import DATA_PARAMS, DataSpec, spec_from_params
from cxrstudy.errors import UsageError
from cxrstudy.hospitals import HOSPITALS, parse_envs
from cxrstudy.labels import canonical_label, label_key
from cxrstudy.params import as_bool, as_choice, as_float, as_int, optional
from cxrstudy.tracking import keys
from cxrstudy.train.balancing import parse_balance
from cxrstudy.train.models import BACKBONES
from cxrstudy.train.presets import resolve_preset

#: train's entry-point parameters; empty values take the preset's
TRAIN_PARAMS = {
    "envs": "cxp,nih",
    "label": "Pneumonia",
    "seed": "0",
    "balance": "none",
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
    "device": "auto",
    "force": "false",
    "parent_run_id": "",
    **DATA_PARAMS,
}

CONFIG_VERSION = 2


def normalise_envs(envs, balance: str) -> tuple[str, ...]:
    """Equal-share training is symmetric in the hospitals, so cxp,nih == nih,cxp; the
    size-matched variant keeps its first (base) hospital first."""
    envs = list(envs)
    order = sorted(envs, key=HOSPITALS.index)
    if balance == "size_matched":
        return (envs[0],) + tuple(e for e in order if e != envs[0])
    return tuple(order)


@dataclass(frozen=True)
class TrainConfig:
    envs: tuple
    label: str
    data: DataSpec
    seed: int = 0
    balance: str = "none"
    preset: str = "cpu"
    backbone: str = "smallcnn"
    pretrained: str = "none"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_steps: int = 600
    eval_every: int = 50
    patience: int = 5
    #: 1 = the paper's augmentation (flip, rotation up to 10 degrees, crop area 0.75..1), 0 = none
    augment_strength: float = 1.0

    def __post_init__(self):
        if self.balance not in keys.BALANCE_MODES:
            raise UsageError(f"unknown balance {self.balance!r}; expected one of: {', '.join(keys.BALANCE_MODES)}")
        if self.balance != "none" and len(self.envs) < 2:
            raise UsageError(f"balance={self.balance} needs at least two training hospitals; got {','.join(self.envs)}")
        if self.backbone not in BACKBONES:
            raise UsageError(f"unknown backbone {self.backbone!r}; expected one of: {', '.join(BACKBONES)}")
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

    def legacy_hash(self) -> str:
        """The hash that runs trained before the data fingerprint joined the identity were tagged
        with (config version 1). Such a run is reused only when the cache keys of the data it logged
        as inputs equal today's (``runs.train.find_trained``); otherwise the model is retrained."""
        d = self.to_dict()
        d.pop("preset")
        if d["augment_strength"] == 1.0:
            d.pop("augment_strength")
        d["version"] = 1
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def model_name(self) -> str:
        """Registry name: cxrstudy-<source>-<envs>-<label>-<balance>."""
        return f"cxrstudy-{self.data.source}-{'-'.join(self.envs)}-{label_key(self.label)}-{self.balance}"


def config_from_params(raw: dict) -> TrainConfig:
    """Validate raw entry-point parameters (strings) into a TrainConfig; the preset fills blanks."""
    preset_name, preset = resolve_preset(raw.get("preset", "auto"))

    def pick(name):
        v = optional(raw.get(name, ""))
        return preset[name] if v is None else v

    balance = parse_balance(raw.get("balance", "none"))
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
        pretrained=str(pick("pretrained")),
        lr=as_float("lr", pick("lr"), lo=0.0, hi=10.0),
        weight_decay=as_float("weight_decay", pick("weight_decay"), lo=0.0, hi=10.0),
        batch_size=as_int("batch_size", pick("batch_size"), lo=1, hi=65536),
        max_steps=as_int("max_steps", pick("max_steps"), lo=1),
        eval_every=as_int("eval_every", pick("eval_every"), lo=1),
        patience=as_int("patience", pick("patience"), lo=1),
        augment_strength=as_float("augment_strength", pick("augment_strength"), lo=0.0, hi=3.0),
    )


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
        "source": d.source, "data_root": d.data_root or "",
        "roots": ",".join(f"{e}={p}" for e, p in d.roots), "cache_dir": d.cache_dir,
        "synthetic_patients": str(d.synthetic.n_patients), "shortcut_strength": repr(d.synthetic.shortcut_strength),
        "synthetic_seed": str(d.synthetic.seed),
    }
    return out
