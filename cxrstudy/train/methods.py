"""Training methods for worst-group robustness: ERM, group reweighting, GroupDRO, JTT and DFR.

A *method* decides how a training batch becomes a loss (and, for JTT and DFR, adds a phase of
its own before or after the training). Each is one small class, looked up by name, whose
hyperparameters keep their default and their search range side by side (``HPARAMS``), as in
DomainBed's ``algorithms.py`` and ``hparams_registry.py``; as in SubpopBench, a new method
usually overrides only ``loss``.

Conventions shared with the training loop
-----------------------------------------
* A batch gives images, labels ``y`` (0/1) and ``env``, the hospital's index ``0..k-1`` within
  the run's training hospitals. A (hospital, label) *group* is defined once, in
  :mod:`cxrstudy.train.groups` (``group_ids``); a run with ``k`` hospitals has ``2 * k``.
* ``group_counts`` (length ``n_groups``) counts the TRAINING split's examples per group
  (``group_counts_of``). Validation data never reaches a method, so thresholds and model
  selection on the validation split stay honest.
* ``loss(logits, y, group, weight=None)`` is called once per training step; GroupDRO updates its
  group weights ``q`` on every call. Logits are ``(N, 2)``, as for cross-entropy.
* ``state_dict()`` holds tensors only (``torch.load(..., weights_only=True)`` reads it back);
  saved with the model and optimiser it makes a resumed run continue exactly.
* Hooks the loop calls for every method, in this order (the loop knows no method by name):
  - ``before_training(ctx) -> dict``: a phase of the method's own before the training (JTT
    trains an ERM model for ``jtt_steps`` steps through ``ctx.train_plain`` and keeps which
    TRAINING examples it misclassifies). It returns metrics under the method's own names
    (``"jtt/..."``). When ``ctx.resuming``, the checkpoint's method state (``load_state_dict``)
    already holds what the phase computed, and a method skips it.
  - ``example_weights``: per-example loss weights in training-row order, or None (most
    methods); read after a resume and passed to ``loss`` as ``weight=``.
  - ``after_training(ctx, outcome) -> outcome``: a phase after the training (DFR refits the
    kept model's head on a group-balanced subset of the TRAINING embeddings and chooses the
    threshold again on validation); it adds its metrics to ``outcome.extra``. It must be
    deterministic, since a resumed run repeats it.
  ``ctx`` is a :class:`TrainContext`: the run's config and data, the device, the checkpoint
  folder, and what a phase needs from the loop (a plain ERM training, a model from weights,
  outputs on the training examples, validation).

Adding a method
---------------
Write one class (``@register``, a ``name``, its ``HPARAMS`` -- every key prefixed with
``<name>_`` -- and a ``loss``; keep per-run state in tensors returned by ``state_dict``; a
phase of its own is a hook) and add tests in
``tests/test_methods.py`` checking its loss against a value computed by hand on a tiny batch.
The registry (:mod:`cxrstudy.train.registry`) and the hyperparameters' parsing and search
space (:mod:`cxrstudy.train.hparams`) pick it up; nothing in the training loop changes.

The paper's data-side hospital-label balancing (parameter ``balance``, ``cxrstudy.train.
balancing``) resamples the training and validation splits before training; it is separate from
the method and combines with any of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrstudy.errors import DataError
from cxrstudy.train.groups import group_counts_of, group_ids
from cxrstudy.train.hparams import (HParam, all_hparam_names, default_hparams, parse_for, parse_hparams,
                                    parse_method_list, search_space, suggest)
from cxrstudy.train.registry import DEFAULT_METHOD, METHODS, get_method, method_names, method_suffix, register

__all__ = [
    # the registry and the hyperparameters (cxrstudy.train.registry, cxrstudy.train.hparams), re-exported
    # here: importing them from this module registers the built-in methods first
    "HParam", "METHODS", "DEFAULT_METHOD", "register", "method_names", "get_method", "method_suffix",
    "parse_hparams", "parse_method_list", "default_hparams", "all_hparam_names", "search_space", "suggest",
    # the group definition (cxrstudy.train.groups), which the losses use
    "group_ids", "group_counts_of",
    # this module's own
    "Method", "TrainContext", "make_method",
    "jtt_example_weights", "balanced_group_indices", "retrain_head",
    "ERM", "Reweight", "GroupDRO", "JTT", "DFR",
]


# --------------------------------------------------------------------------------------------
# Losses


def _per_example_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y.long(), reduction="none")


def _weighted_mean(losses: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return losses.mean()
    w = weight.to(losses.device, torch.float32)
    return (w * losses).sum() / w.sum()


# --------------------------------------------------------------------------------------------
# Construction


def make_method(name: str, raw: dict[str, Any] | None = None, *, n_groups: int,
                group_counts: torch.Tensor | None = None) -> Method:
    """``get_method(name)(parse_hparams(name, raw), n_groups, group_counts)``."""
    return get_method(name)(parse_hparams(name, raw), n_groups, group_counts)


# --------------------------------------------------------------------------------------------
# Base class


@dataclass
class TrainContext:
    """What the training loop hands a method's hooks."""

    cfg: Any  #: the run's TrainConfig
    data: Any  #: its TrainData (the training pools and the validation set)
    device: torch.device
    checkpoint_dir: Path  #: the run's checkpoint folder; a phase keeps its own checkpoints in a subfolder
    progress: bool
    #: the training resumes from ``checkpoint_dir/last.pt``: the method state saved there holds what
    #: ``before_training`` computed
    resuming: bool
    #: the label and the group id of every training example, in training-row order
    labels: np.ndarray
    groups: np.ndarray
    #: ``train_plain(checkpoint_dir=..., desc=..., **cfg_fields)``: a plain ERM training on the same
    #: batches with some of the config's fields replaced (``max_steps=``, ``eval_every=``); its outcome
    train_plain: Callable[..., Any]
    #: ``load_model(state)``: a model of the run's backbone holding ``state``, on the device
    load_model: Callable[[dict], nn.Module]
    #: ``outputs(model, rows=None, what="logits" | "embeddings")``: on training examples ``rows``, in eval mode
    outputs: Callable[..., torch.Tensor]
    #: ``validate(model)``: validation metrics, the threshold chosen on validation among them
    validate: Callable[[nn.Module], dict]


class Method:
    """A training method: a loss over a batch, its state, and hooks around the training (see module doc)."""

    name: ClassVar[str] = ""
    #: one line for the docs' table of methods (docs/GUIDE.md, generated: ``python -m cxrstudy.tools.method_table``)
    description: ClassVar[str] = ""
    HPARAMS: ClassVar[dict[str, HParam]] = {}
    #: per-example loss weights in training-row order (None: every example weighs 1)
    example_weights: torch.Tensor | None = None

    def __init__(self, hparams: dict | None, n_groups: int, group_counts: torch.Tensor | None = None):
        if int(n_groups) < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        self.hparams = parse_for(type(self), hparams)
        self.n_groups = int(n_groups)
        self.group_counts = None
        if group_counts is not None:
            gc = torch.as_tensor(group_counts, dtype=torch.float32).reshape(-1).clone()
            if len(gc) != self.n_groups:
                raise ValueError(f"group_counts has {len(gc)} entries; expected n_groups={self.n_groups}")
            if bool((gc < 0).any()):
                raise ValueError("group_counts must be >= 0")
            self.group_counts = gc

    @classmethod
    def suggest(cls, trial) -> dict[str, float | int]:
        """Ask an Optuna-like ``trial`` for every hyperparameter (:func:`~cxrstudy.train.hparams.suggest`)."""
        return suggest(cls.HPARAMS, trial)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, group: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy; with ``weight``, ``sum(w * l) / sum(w)``."""
        if weight is None:  # PyTorch's own mean reduction: bit-identical to ERM before methods existed
            return F.cross_entropy(logits.float(), y.long())
        return _weighted_mean(_per_example_ce(logits, y), weight)

    # ---- state, for exact resume (tensors only)
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        extra = set(state) - set(self._state_keys())
        if extra:
            raise DataError(f"method {self.name}: checkpoint state has unexpected entries {sorted(extra)}; "
                            f"was it saved by another method?")
        self._load(state)

    def _state_keys(self) -> tuple[str, ...]:
        return ()

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        pass

    # ---- hooks around the training (the loop calls them for every method)
    def before_training(self, ctx: TrainContext) -> dict[str, float]:
        """A phase before the training; returns its metrics (named ``<name>/...``). None by default."""
        return {}

    def after_training(self, ctx: TrainContext, outcome):
        """A phase after the training: returns the outcome to keep (its ``extra`` holding the
        phase's metrics). The training's own outcome by default."""
        return outcome

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v:g}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({hp})"


def _check_groups(group: torch.Tensor, n_groups: int) -> torch.Tensor:
    g = group.long()
    if len(g) and (int(g.min()) < 0 or int(g.max()) >= n_groups):
        raise ValueError(f"group ids must lie in 0..{n_groups - 1}")
    return g


# --------------------------------------------------------------------------------------------
# Methods


@register
class ERM(Method):
    """Empirical risk minimisation: mean cross-entropy."""

    name = DEFAULT_METHOD
    description = "mean cross-entropy (the paper)"


@register
class Reweight(Method):
    """Each example's loss weighted by ``1 / n_g``, its (hospital, label) group's TRAINING count.

    ``w_g`` are normalised to sum to 1 over groups with examples (a group with none gets 0);
    the batch loss is ``sum_i w_{g_i} l_i / sum_i w_{g_i}``.
    """

    name = "reweight"
    description = ("each example's loss weighted by the inverse frequency of its (hospital, label) group "
                   "in the train split")

    def __init__(self, hparams, n_groups, group_counts=None):
        super().__init__(hparams, n_groups, group_counts)
        if self.group_counts is None:
            raise ValueError("method reweight needs the training set's group_counts")
        gc = self.group_counts
        inv = torch.where(gc > 0, 1.0 / torch.where(gc > 0, gc, torch.ones_like(gc)), torch.zeros_like(gc))
        self.group_weights = inv / inv.sum()

    def loss(self, logits, y, group, weight=None):
        g = _check_groups(group, self.n_groups)
        w = self.group_weights.to(logits.device)[g]
        if weight is not None:
            w = w * weight.to(w.device, torch.float32)
        return _weighted_mean(_per_example_ce(logits, y), w)


@register
class GroupDRO(Method):
    """Online group DRO (Sagawa et al., 2020).

    Per step: ``L_g`` = mean loss of group ``g`` in the batch; ``q_g <- q_g * exp(eta * L_g)``
    for groups present (absent groups keep theirs), ``q <- q / sum(q)``; the loss is
    ``sum_g q_g L_g`` with the updated ``q`` (absent groups add nothing). ``q`` starts uniform
    and is the method's state.
    """

    name = "groupdro"
    description = "online GroupDRO over the (hospital, label) groups (Sagawa et al., 2020)"
    HPARAMS = {"groupdro_eta": HParam(0.01, 1e-3, 1.0, log=True, help="step size of the group weights q")}

    def __init__(self, hparams, n_groups, group_counts=None):
        super().__init__(hparams, n_groups, group_counts)
        self.q = torch.full((self.n_groups,), 1.0 / self.n_groups)

    def loss(self, logits, y, group, weight=None):
        losses = _per_example_ce(logits, y)
        g = _check_groups(group, self.n_groups).to(losses.device)
        w = torch.ones_like(losses) if weight is None else weight.to(losses.device, torch.float32)
        total = torch.zeros(self.n_groups, device=losses.device).index_add(0, g, w * losses)
        mass = torch.zeros(self.n_groups, device=losses.device).index_add(0, g, w)
        present = mass > 0
        group_loss = torch.where(present, total / mass.clamp_min(1e-12), torch.zeros_like(total))
        with torch.no_grad():
            q = self.q.to(losses.device)
            step = self.hparams["groupdro_eta"] * group_loss.detach() * present
            self.q = torch.softmax(torch.log(q) + step, dim=0)  # q * exp(step), renormalised
        return (self.q * group_loss).sum()

    def state_dict(self):
        return {"q": self.q.detach().cpu().clone()}

    def _state_keys(self):
        return ("q",)

    def _load(self, state):
        q = state.get("q")
        if q is None or tuple(q.shape) != (self.n_groups,):
            raise DataError(f"method groupdro: checkpoint q has shape "
                            f"{None if q is None else tuple(q.shape)}; expected ({self.n_groups},)")
        self.q = q.detach().to(torch.float32).clone()


def jtt_example_weights(errors, lam: float) -> np.ndarray:
    """JTT's per-example weights: ``lam`` where the identification model erred, else 1."""
    e = np.asarray(errors)
    if e.dtype != bool:
        raise ValueError(f"errors must be a boolean array, got dtype {e.dtype}")
    return np.where(e, float(lam), 1.0).astype(np.float64)


@register
class JTT(Method):
    """Just Train Twice (Liu et al., 2021), with loss weights instead of upsampling.

    Phase 1: an ERM model trained for ``jtt_steps`` optimiser steps (an absolute count, not a
    fraction of the final run; the final run still trains for its full ``max_steps``). Its
    misclassified TRAINING examples (argmax of the logits != label) form the error set.
    Phase 2: a fresh model trained with per-example loss weight ``jtt_lambda`` on the error set
    and 1 elsewhere (weighted mean ``sum(w l) / sum(w)``), which in expectation equals JTT's
    upsampling of the error set by ``jtt_lambda``.
    """

    name = "jtt"
    description = ("just train twice (Liu et al., 2021): an ERM model trained for `jtt_steps` steps, then a "
                   "fresh model with its misclassified train examples upweighted by `jtt_lambda`")
    HPARAMS = {
        "jtt_lambda": HParam(20.0, 1.0, 100.0, log=True, help="loss weight of examples the identification model misclassified"),
        "jtt_steps": HParam(200, 10, 2000, log=True, kind="int",
                            help="optimiser steps of the identification ERM run (a count, not a fraction)"),
    }

    def __init__(self, hparams, n_groups, group_counts=None):
        super().__init__(hparams, n_groups, group_counts)
        self.example_weights: torch.Tensor | None = None  # set after identification

    def identification_steps(self) -> int:
        """Optimiser steps of the identification ERM run."""
        return int(self.hparams["jtt_steps"])

    def before_training(self, ctx):
        if ctx.resuming:  # the checkpoint's method state holds the weights
            return {}
        errors = self.identification_errors(ctx)
        self.set_identification_errors(errors)
        return {"jtt/n_errors": float(errors.sum()), "jtt/error_rate": float(errors.mean())}

    def identification_errors(self, ctx) -> np.ndarray:
        """Phase 1: an ERM model trained for ``jtt_steps`` steps on the same batches (its own
        checkpoints under ``identify/``); which training examples it misclassifies."""
        steps = self.identification_steps()
        first = ctx.train_plain(checkpoint_dir=ctx.checkpoint_dir / "identify", desc="identify",
                                max_steps=steps, eval_every=steps)
        model = ctx.load_model(first.best_state)
        pred = ctx.outputs(model).argmax(1).numpy()
        return pred != ctx.labels

    def set_identification_errors(self, errors) -> np.ndarray:
        """Store (and return) the per-example weights of the final run, in training-row order."""
        w = jtt_example_weights(errors, self.hparams["jtt_lambda"])
        self.example_weights = torch.from_numpy(w.astype(np.float32))
        return w

    def state_dict(self):
        return {} if self.example_weights is None else {"example_weights": self.example_weights.clone()}

    def _state_keys(self):
        return ("example_weights",)

    def _load(self, state):
        w = state.get("example_weights")
        self.example_weights = None if w is None else w.detach().to(torch.float32).reshape(-1).clone()


def balanced_group_indices(group, seed: int) -> np.ndarray:
    """Row indices that undersample every non-empty group to the smallest one's size (seeded).

    Sorted int64 array; groups are drawn without replacement, so an already balanced input
    gives back every row.
    """
    g = np.asarray(group.cpu() if isinstance(group, torch.Tensor) else group).reshape(-1).astype(np.int64)
    if len(g) == 0:
        raise DataError("cannot balance an empty set of examples")
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(g, return_counts=True)
    m = int(counts.min())
    picked = [rng.choice(np.flatnonzero(g == lab), size=m, replace=False) for lab in labels]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def retrain_head(head: nn.Linear, features: torch.Tensor, y: torch.Tensor, group: torch.Tensor, *,
                 l2: float, steps: int, seed: int) -> None:
    """Refit ``head`` (a 2-output ``nn.Linear``) in place on a group-balanced subset (DFR).

    The rows ``balanced_group_indices(group, seed)`` are kept; features are standardised with
    that subset's mean and std; a fresh linear softmax classifier (starting at zero) minimises
    ``mean CE + l2 * ||W||^2`` (bias not penalised) with full-batch L-BFGS for at most ``steps``
    iterations; the standardisation is folded back into ``head.weight`` and ``head.bias``.
    Nothing but the head's two parameters changes. The problem is convex (strictly so for
    ``l2 > 0``), so the result depends on the data and ``seed`` only.
    """
    if head.out_features != 2:
        raise ValueError(f"retrain_head expects a 2-output head, got {head.out_features}")
    idx = torch.from_numpy(balanced_group_indices(group, seed))
    dev = head.weight.device
    x = features.detach().reshape(len(features), -1)[idx.to(features.device)].to(dev, torch.float32)
    t = y.detach().long()[idx.to(y.device)].to(dev)
    if x.shape[1] != head.in_features:
        raise ValueError(f"features have {x.shape[1]} columns; the head expects {head.in_features}")
    mu = x.mean(0)
    sd = x.std(0, unbiased=False)
    sd = torch.where(sd > 1e-8, sd, torch.ones_like(sd))
    z = (x - mu) / sd
    with torch.enable_grad():
        w = torch.zeros(2, x.shape[1], device=dev, requires_grad=True)
        b = torch.zeros(2, device=dev, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=int(steps), history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            opt.zero_grad()
            obj = F.cross_entropy(z @ w.T + b, t) + l2 * (w * w).sum()
            obj.backward()
            return obj

        opt.step(closure)
    with torch.no_grad():
        w_eff = w.detach() / sd
        head.weight.copy_(w_eff.to(head.weight.dtype))
        head.bias.copy_((b.detach() - w_eff @ mu).to(head.bias.dtype))


@register
class DFR(Method):
    """Deep Feature Reweighting (Kirichenko et al., 2022), on the TRAINING split.

    Train with plain ERM; then refit only the last layer on the training embeddings of a
    (hospital, label)-group-balanced subset (``retrain_head``). Validation data stays out, so
    the threshold and model selection chosen on it remain honest.
    """

    name = "dfr"
    description = ("deep feature reweighting (Kirichenko et al., 2022): after ERM, only the head is refit on "
                   "a group-balanced subset of the train split's embeddings; val stays untouched for the "
                   "threshold and model selection")
    HPARAMS = {
        "dfr_l2": HParam(1e-2, 1e-5, 10.0, log=True, help="L2 penalty on the refitted head's weights (standardised features)"),
        "dfr_steps": HParam(100, 10, 1000, log=True, kind="int", help="L-BFGS iterations of the head refit"),
    }

    def retrain(self, head: nn.Linear, features: torch.Tensor, y: torch.Tensor, group: torch.Tensor, *,
                seed: int) -> None:
        """Refit ``head`` in place (:func:`retrain_head` with this method's ``dfr_l2`` and ``dfr_steps``)."""
        retrain_head(head, features, y, group, l2=float(self.hparams["dfr_l2"]),
                     steps=int(self.hparams["dfr_steps"]), seed=seed)

    def after_training(self, ctx, outcome):
        """Refit the kept model's head on a group-balanced subset of the training embeddings
        (only those rows are embedded: ``retrain_head`` balances again, a no-op), then choose
        the threshold again on validation. Deterministic, so a resumed run repeats it exactly."""
        model = ctx.load_model(outcome.best_state)
        rows = balanced_group_indices(ctx.groups, ctx.cfg.seed)
        feats = ctx.outputs(model, rows=rows, what="embeddings")
        self.retrain(model.head, feats.to(ctx.device), torch.from_numpy(ctx.labels[rows]).to(ctx.device),
                     torch.from_numpy(ctx.groups[rows]).to(ctx.device), seed=ctx.cfg.seed)
        m = ctx.validate(model)
        extra = {**outcome.extra, "dfr/val_macro_f1_before": outcome.best_score, "dfr/n_balanced": float(len(rows))}
        return dataclasses.replace(outcome, best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                                   threshold=float(m["threshold"]), best_score=float(m["macro_f1"]), extra=extra,
                                   kept_val={"step": outcome.best_step, **{k: float(v) for k, v in m.items()}})
