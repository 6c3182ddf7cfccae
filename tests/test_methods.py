"""Training methods (cxrstudy.train.methods): losses against hand-computed values, state, registry."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrstudy.errors import UsageError
from cxrstudy.train import methods as M


def _ce(logit0: float, logit1: float, y: int) -> float:
    """Cross-entropy of a 2-logit example, by hand."""
    m = max(logit0, logit1)
    lse = m + math.log(math.exp(logit0 - m) + math.exp(logit1 - m))
    return lse - (logit1 if y else logit0)


LOGITS = [[0.0, 0.0], [1.0, -1.0], [0.5, 2.0], [-2.0, 1.0], [3.0, 0.0]]
Y = [1, 1, 0, 1, 0]
GROUP = [0, 1, 0, 3, 2]  # the group need not match y here; losses only use the ids


def _batch():
    return (torch.tensor(LOGITS, requires_grad=True), torch.tensor(Y), torch.tensor(GROUP))


def _hand_losses():
    return [_ce(a, b, y) for (a, b), y in zip(LOGITS, Y)]


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---- losses --------------------------------------------------------------------------------


def test_erm_equals_cross_entropy_and_hand_value():
    logits, y, g = _batch()
    method = M.make_method("erm", {}, n_groups=4)
    loss = method.loss(logits, y, g)
    assert torch.allclose(loss, F.cross_entropy(logits, y))
    assert loss.item() == pytest.approx(sum(_hand_losses()) / 5, rel=1e-6)
    w = torch.tensor([1.0, 2.0, 0.0, 1.0, 4.0])
    hand = sum(wi * li for wi, li in zip(w.tolist(), _hand_losses())) / w.sum().item()
    assert method.loss(logits, y, g, weight=w).item() == pytest.approx(hand, rel=1e-6)


def test_group_ids_and_counts():
    env, y = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0])
    g = M.group_ids(env, y)
    assert g.tolist() == [0, 1, 3, 3, 2]
    assert M.group_counts_of(g, 4).tolist() == [1.0, 1.0, 1.0, 2.0]
    from cxrstudy.train import groups

    assert groups.group_ids(env.numpy(), y.numpy()).tolist() == g.tolist()  # arrays as tensors
    assert [groups.hospital_and_label(int(k)) for k in g] == list(zip(env.tolist(), y.tolist()))
    assert groups.n_groups(2) == 4
    assert groups.group_name("nih", 1) == "nih/y=1" and groups.parse_group_name("nih/y=1") == ("nih", 1)
    assert groups.parse_group_name(groups.group_name("a/y=b", 0)) == ("a/y=b", 0)
    with pytest.raises(ValueError, match="expected <hospital>/y=0"):
        groups.parse_group_name("nih/1")


def test_reweight_is_inverse_group_frequency_weighted_mean():
    logits, y, g = _batch()
    counts = torch.tensor([2.0, 4.0, 1.0, 8.0, 0.0, 5.0])  # group 4 absent from training: weight 0
    method = M.make_method("reweight", {}, n_groups=6, group_counts=counts)
    inv = {0: 1 / 2, 1: 1 / 4, 2: 1 / 1, 3: 1 / 8}
    ws = [inv[k] for k in GROUP]
    hand = sum(w * l for w, l in zip(ws, _hand_losses())) / sum(ws)
    assert method.loss(logits, y, g).item() == pytest.approx(hand, rel=1e-6)
    assert method.group_weights[4].item() == 0.0
    assert method.group_weights.sum().item() == pytest.approx(1.0)
    # combines multiplicatively with per-example weights
    extra = [1.0, 3.0, 1.0, 2.0, 1.0]
    ws2 = [a * b for a, b in zip(ws, extra)]
    hand2 = sum(w * l for w, l in zip(ws2, _hand_losses())) / sum(ws2)
    assert method.loss(logits, y, g, weight=torch.tensor(extra)).item() == pytest.approx(hand2, rel=1e-6)
    with pytest.raises(ValueError):
        M.make_method("reweight", {}, n_groups=4)  # needs the training counts


def test_groupdro_one_step_matches_hand_formula_and_moves_q():
    logits, y, g = _batch()
    eta = 0.5
    L = _hand_losses()
    group_loss = {0: (L[0] + L[2]) / 2, 1: L[1], 2: L[4], 3: L[3]}  # groups 4 and 5 absent
    method = M.make_method("groupdro", {"groupdro_eta": str(eta)}, n_groups=6)
    unnorm = [(1 / 6) * (math.exp(eta * group_loss[k]) if k in group_loss else 1.0) for k in range(6)]
    q = [u / sum(unnorm) for u in unnorm]
    hand = sum(q[k] * group_loss[k] for k in group_loss)
    loss = method.loss(logits, y, g)
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    assert method.q.tolist() == pytest.approx(q, rel=1e-5)
    worst = max(group_loss, key=group_loss.get)
    assert int(method.q.argmax()) == worst and method.q[worst] > 1 / 6
    assert method.q[4] < 1 / 6 and method.q[5] < 1 / 6  # absent groups lose weight only by renormalising
    loss.backward()  # q is a constant; gradients reach the logits
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_groupdro_state_roundtrip_gives_identical_losses():
    torch.manual_seed(0)
    batches = [(torch.randn(8, 2), torch.randint(0, 2, (8,)), torch.randint(0, 4, (8,))) for _ in range(6)]
    a = M.make_method("groupdro", {"groupdro_eta": "0.3"}, n_groups=4)
    for b in batches[:3]:
        a.loss(*b)
    state = _roundtrip(a.state_dict())
    b_ = M.make_method("groupdro", {"groupdro_eta": "0.3"}, n_groups=4)
    assert not torch.equal(b_.q, a.q)
    b_.load_state_dict(state)
    for b in batches[3:]:
        assert torch.equal(a.loss(*b), b_.loss(*b))
        assert torch.equal(a.q, b_.q)
    with pytest.raises(Exception, match="unexpected"):
        M.make_method("erm", {}, n_groups=4).load_state_dict(state)


def test_jtt_weights_equal_lambda_on_error_set():
    errors = np.array([True, False, False, True, True, False])
    w = M.jtt_example_weights(errors, 20.0)
    assert w.dtype == np.float64
    assert (w[errors] == 20.0).all() and (w[~errors] == 1.0).all()
    with pytest.raises(ValueError):
        M.jtt_example_weights(np.array([0, 1]), 5.0)
    method = M.make_method("jtt", {"jtt_lambda": "7", "jtt_steps": "50"}, n_groups=4)
    # a phase before the training (identification), none after
    assert type(method).before_training is not M.Method.before_training
    assert type(method).after_training is M.Method.after_training
    assert method.identification_steps() == 50
    assert method.state_dict() == {}
    got = method.set_identification_errors(errors)
    assert (got == np.where(errors, 7.0, 1.0)).all()
    again = M.make_method("jtt", {"jtt_lambda": "7"}, n_groups=4)
    again.load_state_dict(_roundtrip(method.state_dict()))
    assert torch.equal(again.example_weights, method.example_weights)
    # the loss is the weighted mean with the per-example weights passed in
    logits, y, g = _batch()
    wt = method.example_weights[:5]
    hand = sum(wi * li for wi, li in zip(wt.tolist(), _hand_losses())) / wt.sum().item()
    assert method.loss(logits, y, g, weight=wt).item() == pytest.approx(hand, rel=1e-6)


# ---- DFR -----------------------------------------------------------------------------------


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 6))
        self.head = nn.Linear(6, 2)

    def embed(self, x):
        return self.trunk(x)

    def forward(self, x):
        return self.head(self.embed(x))


def _toy_data(seed=0):
    """Two hospitals, labels separable along x[:, 0]; groups very unequal (200, 20, 30, 150)."""
    rng = np.random.default_rng(seed)
    xs, ys, gs = [], [], []
    for grp, n in enumerate([200, 20, 30, 150]):
        env, lab = divmod(grp, 2)
        x = rng.normal(size=(n, 3)) * 0.3
        x[:, 0] += 1.0 if lab else -1.0
        x[:, 1] += 2.0 * env  # hospital shift
        xs.append(x); ys += [lab] * n; gs += [grp] * n
    return (torch.tensor(np.concatenate(xs), dtype=torch.float32), torch.tensor(ys), torch.tensor(gs))


def test_balanced_group_indices():
    g = np.array([0] * 10 + [1] * 3 + [3] * 5)  # group 2 empty: ignored
    idx = M.balanced_group_indices(g, seed=1)
    assert np.bincount(g[idx], minlength=4).tolist() == [3, 3, 0, 3]
    assert (np.diff(idx) > 0).all()
    assert (idx == M.balanced_group_indices(torch.from_numpy(g), seed=1)).all()
    assert any((M.balanced_group_indices(g, seed=s) != idx).any() for s in range(2, 6))
    bal = np.array([0, 1, 2, 3] * 4)
    assert M.balanced_group_indices(bal, seed=3).tolist() == list(range(16))


def test_dfr_retrain_head_changes_only_head_and_fits_balanced_toy():
    torch.manual_seed(0)
    model = _Toy()
    x, y, g = _toy_data()
    trunk_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    with torch.no_grad():
        feats = model.embed(x)
    method = M.make_method("dfr", {"dfr_l2": "1e-3"}, n_groups=4)
    # a phase after the training (the head's refit), none before
    assert type(method).after_training is not M.Method.after_training
    assert type(method).before_training is M.Method.before_training
    method.retrain(model.head, feats, y, g, seed=0)
    for k, v in model.trunk.state_dict().items():
        assert torch.equal(v, trunk_before[k]), k
    assert all(p.grad is None for p in model.trunk.parameters())
    assert not torch.equal(model.head.weight, head_before["weight"])
    with torch.no_grad():
        pred = model(x).argmax(1)
    for grp in range(4):  # accurate in every group, the small ones included
        assert (pred[g == grp] == y[g == grp]).float().mean().item() >= 0.95, grp
    # same seed, same head (deterministic); the function on its own gives the same result
    other = nn.Linear(6, 2)
    M.retrain_head(other, feats, y, g, l2=1e-3, steps=method.hparams["dfr_steps"], seed=0)
    assert torch.allclose(other.weight, model.head.weight, atol=1e-5)
    # it fits the balanced subset only: embedding just those rows first gives the same head
    idx = torch.from_numpy(M.balanced_group_indices(g, seed=0))
    sub = nn.Linear(6, 2)
    M.retrain_head(sub, feats[idx], y[idx], g[idx], l2=1e-3, steps=method.hparams["dfr_steps"], seed=0)
    assert torch.allclose(sub.weight, model.head.weight, atol=1e-5)
    assert torch.allclose(sub.bias, model.head.bias, atol=1e-5)


# ---- registry and hyperparameters ----------------------------------------------------------


def test_registry_names_defaults_and_parsing():
    assert M.method_names()[:5] == ["erm", "reweight", "groupdro", "jtt", "dfr"]
    assert M.get_method(" GroupDRO ") is M.GroupDRO
    assert M.default_hparams("erm") == {}
    assert M.default_hparams("groupdro") == {"groupdro_eta": 0.01}
    assert M.default_hparams("jtt") == {"jtt_lambda": 20.0, "jtt_steps": 200}
    for name in M.method_names():
        defaults = M.default_hparams(name)
        assert M.parse_hparams(name, {k: str(v) for k, v in defaults.items()}) == defaults
        for key in M.get_method(name).HPARAMS:
            assert key.startswith(name + "_")
    got = M.parse_hparams("jtt", {"jtt_lambda": " 5.5 ", "jtt_steps": "300", "other": ""})
    assert got == {"jtt_lambda": 5.5, "jtt_steps": 300} and isinstance(got["jtt_steps"], int)
    assert M.parse_hparams("dfr", {"dfr_steps": "1e2"})["dfr_steps"] == 100


def _one_line_usage(fn, *needles):
    with pytest.raises(UsageError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg and ei.value.exit_code == 2
    for n in needles:
        assert n in msg, (n, msg)


def test_usage_errors_name_the_problem():
    _one_line_usage(lambda: M.get_method("mixup"), "mixup", "erm", "groupdro", "jtt", "dfr")
    _one_line_usage(lambda: M.parse_hparams("jtt", {"jtt_lambda": "500"}), "jtt_lambda", "500", "1..100")
    _one_line_usage(lambda: M.parse_hparams("jtt", {"jtt_lambda": "0.5"}), "jtt_lambda", "0.5")
    _one_line_usage(lambda: M.parse_hparams("jtt", {"jtt_steps": "12.5"}), "jtt_steps", "12.5", "integer")
    _one_line_usage(lambda: M.parse_hparams("groupdro", {"groupdro_eta": "fast"}), "groupdro_eta", "fast")
    _one_line_usage(lambda: M.parse_hparams("groupdro", {"groupdro_eta": "nan"}), "groupdro_eta")
    _one_line_usage(lambda: M.parse_hparams("jtt", {"groupdro_eta": "0.1"}),
                    "groupdro_eta", "0.1", "groupdro", "jtt_lambda", "jtt_steps")
    _one_line_usage(lambda: M.parse_hparams("erm", {"dfr_l2": "1"}), "dfr_l2", "dfr", "no hyperparameters")
    _one_line_usage(lambda: M.parse_hparams("dfr", {"dfr_lr": "1"}), "unknown", "dfr_lr", "dfr_l2", "dfr_steps")
    _one_line_usage(lambda: M.make_method("nope", {}, n_groups=4), "nope")


class _Trial:
    def __init__(self):
        self.calls = []

    def suggest_float(self, name, low, high, log=False):
        self.calls.append(("float", name, low, high, log))
        return high

    def suggest_int(self, name, low, high, log=False):
        self.calls.append(("int", name, low, high, log))
        return low


def test_suggest_asks_the_trial_for_each_hparam():
    t = _Trial()
    assert M.get_method("jtt").suggest(t) == {"jtt_lambda": 100.0, "jtt_steps": 10}
    assert t.calls == [("float", "jtt_lambda", 1.0, 100.0, True), ("int", "jtt_steps", 10, 2000, True)]
    assert M.get_method("erm").suggest(t) == {}


def test_a_search_space_takes_a_subset_in_declared_order():
    from cxrstudy.train import hparams

    jtt = M.get_method("jtt").HPARAMS
    assert hparams.search_space("jtt") == jtt and list(hparams.search_space("JTT")) == ["jtt_lambda", "jtt_steps"]
    assert hparams.search_space("jtt", only={"jtt_steps", "jtt_lambda"}) == jtt
    assert hparams.search_space("jtt", only=["jtt_steps"]) == {"jtt_steps": jtt["jtt_steps"]}
    assert hparams.search_space("erm", only=[]) == {}
    t = _Trial()
    assert hparams.suggest(hparams.search_space("jtt", only=["jtt_steps"]), t) == {"jtt_steps": 10}
    assert t.calls == [("int", "jtt_steps", 10, 2000, True)]  # the rest is not asked
    _one_line_usage(lambda: hparams.search_space("jtt", only=["groupdro_eta"]), "groupdro_eta", "jtt_lambda")


def test_adding_a_method_is_one_class():
    @M.register
    class Focal(M.Method):
        name = "focaltest"
        HPARAMS = {"focaltest_gamma": M.HParam(2.0, 0.0, 5.0, help="focusing")}

        def loss(self, logits, y, group, weight=None):
            logp = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
            return (-(1 - logp.exp()) ** self.hparams["focaltest_gamma"] * logp).mean()

    try:
        logits, y, g = _batch()
        m = M.make_method("focaltest", {"focaltest_gamma": "0"}, n_groups=4)
        assert m.loss(logits, y, g).item() == pytest.approx(sum(_hand_losses()) / 5, rel=1e-6)
        _one_line_usage(lambda: M.parse_hparams("focaltest", {"focaltest_gamma": "9"}), "focaltest_gamma")
    finally:
        M.METHODS.pop("focaltest", None)
    with pytest.raises(ValueError):
        M.register(type("Bad", (M.Method,), {"name": "bad", "HPARAMS": {"eta": M.HParam(1.0, 0.5, 2.0)}}))
    assert "bad" not in M.METHODS


def test_erm_keeps_its_old_names_through_one_helper():
    assert M.DEFAULT_METHOD == M.get_method("erm").name == "erm"
    assert M.method_suffix("erm") == "" and M.method_suffix("erm", "/") == ""
    assert M.method_suffix("groupdro") == "-groupdro" and M.method_suffix("jtt", "/") == "/jtt"
