"""A method with phases of its own is one class: the training loop calls its hooks and knows no
method by name (an example method defined here, trained through train_model), and the docs'
table of methods is the registry's."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cxrstudy.train.registry as registry
from cxrstudy.train.config import with_method
from cxrstudy.train.loop import prepare_data, train_model
from cxrstudy.train.methods import DEFAULT_METHOD, HParam, Method, method_names, register
from test_methods_training import crash_at_step
from test_train_evaluate import tiny_config

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


class LogitAdjust(Method):
    """Logit adjustment (Menon et al., 2021): before training, the training labels' log prior is
    measured (its own phase, with its own metric); the loss adds ``tau * log prior`` to the logits;
    after training, the kept model is validated again and its WGA logged under the method's name."""

    name = "logitadj"
    description = "logit-adjusted cross-entropy (a test's example)"
    HPARAMS = {"logitadj_tau": HParam(1.0, 0.0, 2.0, help="strength of the adjustment")}

    def __init__(self, hparams, n_groups, group_counts=None):
        super().__init__(hparams, n_groups, group_counts)
        self.log_prior = None
        self.calls = []

    def before_training(self, ctx):
        self.calls.append(("before", ctx.resuming))
        if ctx.resuming:  # the checkpoint's method state holds the prior
            return {}
        prior = np.bincount(ctx.labels, minlength=2) / len(ctx.labels)
        self.log_prior = torch.log(torch.from_numpy(prior).float())
        return {"logitadj/prior_pos": float(prior[1]), "logitadj/n_groups_seen": float(len(np.unique(ctx.groups)))}

    def loss(self, logits, y, group, weight=None):
        return F.cross_entropy(logits + self.hparams["logitadj_tau"] * self.log_prior.to(logits.device), y)

    def after_training(self, ctx, outcome):
        self.calls.append(("after", outcome.best_step))
        m = ctx.validate(ctx.load_model(outcome.best_state))
        outcome.extra["logitadj/val_wga_again"] = m["wga"]
        return outcome

    def state_dict(self):
        return {} if self.log_prior is None else {"log_prior": self.log_prior.clone()}

    def _state_keys(self):
        return ("log_prior",)

    def _load(self, state):
        self.log_prior = state["log_prior"].clone()


@pytest.fixture
def logitadj(monkeypatch):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    register(LogitAdjust)
    made = []
    real_init = LogitAdjust.__init__

    def init(self, *a, **k):  # to look at the instance train_model builds
        real_init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(LogitAdjust, "__init__", init)
    return made


def test_a_method_with_phases_of_its_own_trains_through_the_loop(tmp_path, logitadj):
    cfg = with_method(tiny_config(tmp_path, max_steps=6, eval_every=2, patience=10), "logitadj", {"logitadj_tau": "1"})
    assert cfg.model_name().endswith("-logitadj")
    data = prepare_data(cfg, progress=False)
    out = train_model(cfg, data, device=CPU, checkpoint_dir=tmp_path / "run", progress=False)
    method = logitadj[-1]
    assert method.calls == [("before", False), ("after", out.best_step)]
    y = np.concatenate([p.labels for p in data.pools])
    metrics = out.metrics()
    assert metrics["logitadj/prior_pos"] == pytest.approx(y.mean())
    assert metrics["logitadj/n_groups_seen"] == 4.0
    assert metrics["logitadj/val_wga_again"] == out.best_val()["wga"]  # the kept model, validated again
    assert torch.equal(out.method_state["log_prior"], method.log_prior)

    # resumed after a crash: the phase is skipped, its result comes back from the checkpoint, and
    # the run ends where the uninterrupted one did
    crash_at_step(cfg, data, tmp_path / "cut", 4)
    resumed = train_model(cfg, data, device=CPU, checkpoint_dir=tmp_path / "cut", progress=False)
    assert logitadj[-1].calls == [("before", True), ("after", resumed.best_step)]
    assert resumed.history == out.history and "logitadj/prior_pos" not in resumed.extra
    for k in out.best_state:
        assert torch.equal(resumed.best_state[k], out.best_state[k]), k


def test_the_training_loop_names_no_method():
    """What a method does lives in its class: the loop calls hooks, never asks which method it runs."""
    text = (ROOT / "cxrstudy" / "train" / "loop.py").read_text()
    for name in method_names():
        if name != DEFAULT_METHOD:  # the loop's plain phase is ERM, by the registry's constant
            assert not re.search(rf"\b{name}\b", text, re.I), name
    assert not re.search(r"\berm\b", text, re.I)
    assert not re.search(r"getattr\(\s*method", text)


def test_the_docs_table_of_methods_is_the_registry():
    from cxrstudy.tools.method_table import PAGE, current, render

    assert current(PAGE.read_text()) == render(), "run `python -m cxrstudy.tools.method_table` to regenerate it"
    assert all(f"| `{name}` |" in render() for name in method_names())
