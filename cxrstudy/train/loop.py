"""The training loop of one binary model (docs/PROTOCOL.md "Training"), free of MLflow.

Data: the training hospitals' train splits (balanced as configured) feed equal-share batches;
their val splits are scored every ``eval_every`` steps. The checkpoint with the best
validation macro-F1 (at its best threshold on docs/PROTOCOL.md's grid) is kept; training stops
after ``patience`` validations without improvement or at ``max_steps``. Every validation writes
a resumable checkpoint (model, optimiser, step, early-stopping state); batches and
augmentations are pure functions of (seed, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from cxrstudy.data.loader import EqualShareBatches, HospitalPool, Prefetcher
from cxrstudy.errors import DataError
from cxrstudy.train.augment import augment
from cxrstudy.train.balancing import (BALANCE_HOSPITAL_LABEL, BALANCE_SIZE_MATCHED, hospital_label_balance,
                                      prevalence, size_match)
from cxrstudy.train.config import TrainConfig
from cxrstudy.train.device import autocast, place_model, prepare_input, reproducible
from cxrstudy.train.groups import N_LABELS, group_ids, n_groups, train_groups
from cxrstudy.train.inference import EvalSet, eval_set, pool_outputs, validate
from cxrstudy.train.methods import DEFAULT_METHOD, Method, TrainContext, get_method
from cxrstudy.train.models import BinaryClassifier, build_model


@dataclass
class TrainData:
    pools: list[HospitalPool]
    val: EvalSet
    counts: dict = field(default_factory=dict)  # per-hospital counts/prevalence before and after balancing
    entries: dict = field(default_factory=dict)  # (hospital, split) -> the CacheEntry the data came from


def _label_of(entry, label):
    return entry.index[label].to_numpy().astype(np.int64)


def prepare_data(cfg: TrainConfig, progress: bool = True) -> TrainData:
    spec = cfg.data
    train_e = {e: spec.entry(e, "train", progress=progress) for e in cfg.envs}
    val_e = {e: spec.entry(e, "val", progress=progress) for e in cfg.envs}
    ty = {e: _label_of(x, cfg.label) for e, x in train_e.items()}
    vy = {e: _label_of(x, cfg.label) for e, x in val_e.items()}
    for e in cfg.envs:
        for split, y in (("train", ty[e]), ("val", vy[e])):
            if len(y) == 0:
                raise DataError(f"{e}/{split}: the split is empty")
            if y.sum() == 0:
                raise DataError(f"{e}/{split}: no positives for label {cfg.label!r}; cannot train or validate on it")
    keep_t = {e: np.arange(len(y)) for e, y in ty.items()}
    keep_v = {e: np.arange(len(y)) for e, y in vy.items()}
    counts = {}
    for e in cfg.envs:
        counts[f"{e}/train/n_before"] = len(ty[e])
        counts[f"{e}/train/prev_before"] = prevalence(ty[e])
        counts[f"{e}/val/n_before"] = len(vy[e])
        counts[f"{e}/val/prev_before"] = prevalence(vy[e])
    if cfg.balance == BALANCE_HOSPITAL_LABEL:
        keep_t, keep_v, target = hospital_label_balance(ty, vy, cfg.seed, cfg.label)
        counts["balance/target_prevalence"] = target
    elif cfg.balance == BALANCE_SIZE_MATCHED:
        keep_t = size_match(ty, cfg.envs[0], cfg.seed)
    for e in cfg.envs:
        counts[f"{e}/train/n"] = len(keep_t[e])
        counts[f"{e}/train/prev"] = prevalence(ty[e][keep_t[e]])
        counts[f"{e}/val/n"] = len(keep_v[e])
        counts[f"{e}/val/prev"] = prevalence(vy[e][keep_v[e]])
        if len(keep_t[e]) == 0 or len(keep_v[e]) == 0:
            raise DataError(f"{e}: the train or val split is empty after balance={cfg.balance}")
    pools = [HospitalPool(e, train_e[e].images(), train_e[e].index["slot"].to_numpy()[keep_t[e]], ty[e][keep_t[e]])
             for e in cfg.envs]
    val = eval_set({e: val_e[e] for e in cfg.envs}, cfg.label, keep=keep_v)
    entries = {**{(e, "train"): x for e, x in train_e.items()}, **{(e, "val"): x for e, x in val_e.items()}}
    return TrainData(pools=pools, val=val, counts=counts, entries=entries)


def augment_kwargs(strength: float) -> dict | None:
    """:func:`augment`'s keyword arguments for augmentation strength ``s`` (``None``: no augmentation).

    ``s = 1`` is the paper's augmentation (flip p=0.5, rotation up to 10 degrees, crop area 0.75..1,
    aspect 3/4..4/3); rotation grows as 10*s degrees, the crop's smallest area as 1 - 0.25*s (at
    least 0.1), the aspect range as (4/3)**s, and the flip probability as 0.5*min(s, 1).
    """
    s = float(strength)
    if s <= 0:
        return None
    r = (4 / 3) ** s
    return {"max_rotation": 10.0 * s, "scale": (max(0.1, 1.0 - 0.25 * s), 1.0), "ratio": (1 / r, r),
            "flip_p": 0.5 * min(s, 1.0)}


#: a model converged when it stopped early or kept a checkpoint at most this far to the step cap
CONVERGED_FRACTION = 0.75


@dataclass
class TrainOutcome:
    best_state: dict
    threshold: float
    best_step: int
    best_score: float
    last_step: int
    stopped_early: bool
    history: list
    images_per_s: float
    method_state: dict = field(default_factory=dict)  # the method's state at the end
    extra: dict = field(default_factory=dict)  # what the method's own phases measured, under its names
    kept_val: dict | None = None  # validation metrics of the kept model when no history entry has them
    #: wall seconds this process spent in each part of the loop (:data:`PHASES`); a resumed run counts its own part
    seconds: dict = field(default_factory=dict)

    def best_val(self) -> dict:
        """Validation metrics of the kept model."""
        if self.kept_val is not None:
            return dict(self.kept_val)
        return next((dict(r) for r in self.history if r["step"] == self.best_step), {})

    @property
    def constant(self) -> bool:
        """Whether the kept model predicts one class for every validation image at its threshold
        (all negative or all positive): it has learned nothing usable, and is never compared silently."""
        rate = self.best_val().get("pred_pos_rate")
        return rate is not None and (rate <= 0.0 or rate >= 1.0)

    def converged(self, max_steps: int) -> bool:
        """The convergence rule: training stopped early (patience exhausted) or kept a checkpoint at
        most 75% of the way to the step cap. Otherwise the model was still improving when cut off."""
        return bool(self.stopped_early or self.best_step <= CONVERGED_FRACTION * max_steps)

    def warnings(self, max_steps: int) -> list[str]:
        """What ``train`` warns about: a constant model, a model cut off while still improving."""
        out = []
        if self.constant:
            out.append("the kept model predicts one class for every validation image (a constant model): it learned "
                       "nothing usable; the analysis flags every comparison that uses it")
        if not self.converged(max_steps):
            out.append(f"not converged: the best checkpoint is at step {self.best_step} of max_steps={max_steps} "
                       f"(more than {CONVERGED_FRACTION:.0%}) and patience was not exhausted; raise max_steps")
        return out

    def metrics(self) -> dict:
        """What a tracked run logs about the finished training (train and tune alike)."""
        return {"best_step": self.best_step, "val/best_macro_f1": self.best_score, "threshold": self.threshold,
                "last_step": self.last_step, "stopped_early": float(self.stopped_early),
                "train/images_per_s": self.images_per_s, "val/constant_model": float(self.constant),
                **{f"time/{k}_s": v for k, v in self.seconds.items()}, **self.extra}


def validation_metrics(m: dict) -> dict:
    """The metrics one validation step logs: ``val/*`` and ``train/loss`` (train and tune alike)."""
    return {f"val/{k}": v for k, v in m.items() if k != "train_loss"} | {"train/loss": m["train_loss"]}


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_damage(path: Path) -> str | None:
    """Why the resumable checkpoint at ``path`` cannot be resumed from (a file truncated or
    overwritten after a kill, a disk error), in a few words; None when it loads as one."""
    try:
        ck = load_checkpoint(path)
        int(ck["state"]["step"]), list(ck["state"]["history"]), ck["model"], ck["optimizer"]
    except Exception as e:  # torch raises RuntimeError, pickle errors, EOFError... for a damaged file
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]  # torch's messages run on for lines
        return f"{type(e).__name__}: {first}"[:160]
    return None


def discard_damaged_checkpoint(path: Path) -> str | None:
    """Remove the checkpoint at ``path`` if it exists and cannot be resumed from; returns why
    (None: absent or intact)."""
    if not path.is_file():
        return None
    why = checkpoint_damage(path)
    if why is not None:
        path.unlink(missing_ok=True)
    return why


def build_method(cfg: TrainConfig, pools: list[HospitalPool]) -> Method:
    """The configured method for these training pools. Group counts are per hospital (each
    group's share of its hospital), since every batch takes an equal share from each hospital."""
    _, group = train_groups(pools)
    n = n_groups(len(pools))
    counts = np.bincount(group, minlength=n).astype(np.float64)
    per_hospital = np.repeat([len(p.slots) for p in pools], N_LABELS).astype(np.float64)
    return get_method(cfg.method)(cfg.hparams, n, torch.from_numpy(counts / per_hospital))


def train_model(cfg: TrainConfig, data: TrainData, *, device: torch.device, checkpoint_dir: Path,
                on_eval: Callable[[int, dict], None] | None = None,
                on_checkpoint: Callable[[Path], None] | None = None,
                progress: bool = True) -> TrainOutcome:
    """Train with ``cfg.method`` (or resume from ``checkpoint_dir/last.pt``); return the kept model.

    The method's hooks run around the training (:class:`~cxrstudy.train.methods.Method`):
    ``before_training`` (a phase of its own, e.g. an identification model), the training with
    its loss and ``example_weights``, then ``after_training`` (e.g. a refit head).
    """
    with reproducible(device):  # the same weights however many trainings run beside this one
        return _train_model(cfg, data, device=device, checkpoint_dir=checkpoint_dir, on_eval=on_eval,
                            on_checkpoint=on_checkpoint, progress=progress)


def train_context(cfg: TrainConfig, data: TrainData, *, device: torch.device, checkpoint_dir: Path,
                  progress: bool = True) -> TrainContext:
    """What a method's hooks get from the loop for this training (``resuming`` when
    ``checkpoint_dir/last.pt`` exists)."""
    checkpoint_dir = Path(checkpoint_dir)
    labels, groups = train_groups(data.pools)

    def train_plain(*, checkpoint_dir: Path, desc: str, **fields) -> TrainOutcome:
        plain = dataclasses.replace(cfg, method=DEFAULT_METHOD, method_hparams=(), **fields)
        return _train(plain, data, build_method(plain, data.pools), device=device, checkpoint_dir=checkpoint_dir,
                      progress=progress, desc=desc)

    def load_model(state: dict) -> BinaryClassifier:
        model = place_model(build_model(cfg.backbone, "none"), device)
        model.load_state_dict(state)
        return model

    return TrainContext(cfg=cfg, data=data, device=device, checkpoint_dir=checkpoint_dir, progress=progress,
                        resuming=(checkpoint_dir / "last.pt").is_file(), labels=labels, groups=groups,
                        train_plain=train_plain, load_model=load_model,
                        outputs=lambda model, **kw: pool_outputs(model, data.pools, device, **kw),
                        validate=lambda model: validate(model, data.val, device))


def _train_model(cfg: TrainConfig, data: TrainData, *, device: torch.device, checkpoint_dir: Path,
                 on_eval: Callable[[int, dict], None] | None = None,
                 on_checkpoint: Callable[[Path], None] | None = None,
                 progress: bool = True) -> TrainOutcome:
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    method = build_method(cfg, data.pools)
    ctx = train_context(cfg, data, device=device, checkpoint_dir=checkpoint_dir, progress=progress)
    extra = method.before_training(ctx)
    out = _train(cfg, data, method, device=device, checkpoint_dir=checkpoint_dir, on_eval=on_eval,
                 on_checkpoint=on_checkpoint, progress=progress)
    out.extra.update(extra)
    return method.after_training(ctx, out)


def adam(params, *, lr: float, weight_decay: float) -> torch.optim.Adam:
    """The training's optimiser: Adam, in PyTorch's fused form (one kernel for all parameters; on one
    CPU thread about 4x faster than the per-tensor loop, which was a few percent of a small CNN's step)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


#: the parts of a training's time (:attr:`TrainOutcome.seconds`): waiting for the batch, moving and
#: augmenting it, the forward and backward pass (loss included), the optimiser step, the validation
#: passes, the checkpoints (the best model's copy and ``last.pt``), and the caller's callbacks (logging)
PHASES = ("data", "augment", "forward_backward", "optimizer", "validation", "checkpoint", "callbacks")


class _Clock:
    """Adds the wall time since the last :meth:`lap` to a phase; cheap enough to call every step."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        t = time.perf_counter()
        self.seconds[phase] += t - self._t
        self._t = t


def _train(cfg: TrainConfig, data: TrainData, method: Method, *, device: torch.device, checkpoint_dir: Path,
           on_eval: Callable[[int, dict], None] | None = None, on_checkpoint: Callable[[Path], None] | None = None,
           progress: bool = True, desc: str = "train") -> TrainOutcome:
    """The training loop proper: equal-share batches, the method's loss, validation, checkpoints."""
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = place_model(build_model(cfg.backbone, cfg.pretrained), device)
    opt = adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"step": 0, "best_score": -math.inf, "best_step": 0, "bad_evals": 0, "threshold": 0.5,
             "history": [], "best_model": None}
    last = checkpoint_dir / "last.pt"
    damaged = discard_damaged_checkpoint(last)
    if damaged:
        print(f"warning: the checkpoint {last} is damaged ({damaged}): discarded; {desc} starts from step 0",
              file=sys.stderr, flush=True)
    if last.is_file():
        ck = load_checkpoint(last)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        method.load_state_dict(ck.get("method", {}))
        if progress:
            print(f"resuming from step {state['step']} ({last})", flush=True)
    batches = EqualShareBatches(data.pools, cfg.batch_size, cfg.seed)
    step = state["step"]
    stopped = state["bad_evals"] >= cfg.patience  # an early-stopped run that died before finishing stays stopped
    pin = device.type == "cuda"
    weights = method.example_weights  # after the resume: the checkpoint may have restored them
    prefetch = Prefetcher(batches, step, pin=pin)
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"{desc} {'+'.join(cfg.envs)} {cfg.label}", unit="step",
               disable=not progress, dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    clock = _Clock()
    aug = augment_kwargs(cfg.augment_strength)
    try:
        while step < cfg.max_steps and not stopped:
            model.train()
            b_step, x_u8, y, env = prefetch.next()
            assert b_step == step
            clock.lap("data")
            x = prepare_input(x_u8, device)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            if aug is not None:
                x = augment(x, gen, **aug)
            clock.lap("augment")
            with autocast(device):
                logits = model(x)
            y = y.to(device, non_blocking=True)
            group = group_ids(env.to(device, non_blocking=True), y)
            w = None if weights is None else weights[torch.from_numpy(batches.rows(step))].to(device)
            loss = method.loss(logits.float(), y, group, weight=w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clock.lap("forward_backward")
            opt.step()
            step += 1
            seen += len(y)
            bar.update(1)
            clock.lap("optimizer")
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                metrics = validate(model, data.val, device)
                metrics["train_loss"] = float(loss.item())
                clock.lap("validation")
                improved = metrics["macro_f1"] > state["best_score"]
                if improved:
                    state.update(best_score=metrics["macro_f1"], best_step=step, bad_evals=0,
                                 threshold=metrics["threshold"],
                                 best_model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
                else:
                    state["bad_evals"] += 1
                state["step"] = step
                state["history"].append({"step": step, **{k: float(v) for k, v in metrics.items()}})
                stopped = state["bad_evals"] >= cfg.patience
                bar.set_postfix(f1=f"{metrics['macro_f1']:.3f}", best=f"{state['best_score']:.3f}@{state['best_step']}")
                _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                              "method": method.state_dict()}, last)
                clock.lap("checkpoint")
                if on_eval:
                    on_eval(step, metrics)
                if on_checkpoint:
                    on_checkpoint(last)
                clock.lap("callbacks")
    finally:
        prefetch.close()
        bar.close()
    elapsed = time.perf_counter() - t0
    return TrainOutcome(best_state=state["best_model"], threshold=float(state["threshold"]),
                        best_step=int(state["best_step"]), best_score=float(state["best_score"]),
                        last_step=step, stopped_early=stopped, history=state["history"],
                        images_per_s=seen / elapsed if elapsed > 0 else float("nan"),
                        method_state=method.state_dict(), seconds=clock.seconds)
