"""A tune study's search space: ranges (or fixed values) of lr, weight decay, batch size and
augmentation strength, plus the training method's own hyperparameters (the ranges it declares in
:mod:`cxrstudy.train.methods`, except those given explicitly)."""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from cxrstudy.errors import UsageError
from cxrstudy.params import as_float
from cxrstudy.tracking import keys
from cxrstudy.train.methods import default_hparams, get_method, search_space, suggest

#: the four hyperparameters every method has; each is searched or fixed
SEARCHED = ("lr", "weight_decay", "batch_size", "augment_strength")


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
    method: str = keys.DEFAULT_METHOD
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
        if self.method != keys.DEFAULT_METHOD:
            suggested = suggest(search_space(self.method, only=set(self.method_searched())), trial)
            out["method_hparams"] = self.method_hparams(suggested)
        return out

    def values(self, params: dict) -> dict:
        """A finished trial's values of all four (its suggested params plus the fixed ones)."""
        fixed = {"lr": self.lr.lo, "weight_decay": self.weight_decay.lo, "batch_size": self.batch_sizes[0],
                 "augment_strength": self.augment_strength.lo}
        out = {k: params.get(k, fixed[k]) for k in SEARCHED}
        if self.method != keys.DEFAULT_METHOD:  # the method's own hyperparameters, as TrainConfig holds them
            out["method_hparams"] = self.method_hparams(params)
        return out

    def to_dict(self) -> dict:
        wd = self.weight_decay
        d = {"lr": [self.lr.lo, self.lr.hi, "log"], "weight_decay": [wd.lo, wd.hi, "log"],
             "batch_size": list(self.batch_sizes),
             "augment_strength": [self.augment_strength.lo, self.augment_strength.hi, "linear"]}
        if self.method != keys.DEFAULT_METHOD:  # ERM's spec (and so its study names) as before methods existed
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
