"""Parameter holes (issue 13 part 4a, 4h): an explicit ``none`` wins over the preset; lr must be > 0."""

from __future__ import annotations

import pytest

from cxrstudy.errors import UsageError
from cxrstudy.params import as_float, given, optional
from cxrstudy.train.config import TRAIN_PARAMS, config_from_params
from cxrstudy.train.presets import PRESETS


def raw(**kw) -> dict:
    return {**TRAIN_PARAMS, "envs": "cxp,nih", "label": "any", "image_size": "32", "backbone": "smallcnn",
            "synthetic_patients": "100", "batch_size": "8", "eval_every": "2", "max_steps": "4", **kw}


def test_given_keeps_an_explicit_none_and_optional_does_not():
    assert given("none") == "none" and given(" None ") == "None"
    assert given("") is None and given(None) is None and given("  ") is None
    assert optional("none") is None  # data_root=none etc. still mean 'not given'


# Every train parameter that a preset fills and for which `none` is a legal value. The presets
# carry 'none' only for pretrained; balance=none is parsed directly (no preset default).
NONE_LEGAL = [name for name in PRESETS["paper"] if any(str(p[name]).lower() == "none" for p in PRESETS.values())]


def test_none_legal_parameters_are_the_ones_tested():
    assert NONE_LEGAL == ["pretrained"]


@pytest.mark.parametrize("name", NONE_LEGAL)
@pytest.mark.parametrize("spelling", ["none", "None", "NONE"])
def test_explicit_none_wins_over_the_paper_preset(name, spelling):
    assert str(PRESETS["paper"][name]).lower() != "none"
    cfg = config_from_params(raw(preset="paper", **{name: spelling}))
    assert getattr(cfg, name) == "none"
    # a blank value still takes the preset's
    assert getattr(config_from_params(raw(preset="paper")), name) == PRESETS["paper"][name]


def test_explicit_none_balance_and_none_pretrained_on_cpu_preset_hash_alike():
    a = config_from_params(raw(preset="cpu"))
    b = config_from_params(raw(preset="cpu", pretrained="none", balance="none"))
    assert a.balance == b.balance == "none" and a.content_hash() == b.content_hash()


def test_pretrained_none_through_the_train_entry_point_config(monkeypatch):
    """The issue's repro: --preset paper --pretrained none must build an un-pretrained config."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
    from cxrstudy.runs import cli

    argv = ["--envs", "cxp,nih", "--label", "any", "--preset", "paper", "--pretrained", "none", "--max_steps", "4",
            "--image_size", "32", "--backbone", "smallcnn", "--synthetic_patients", "100", "--batch_size", "8",
            "--eval_every", "2"]
    cfg = config_from_params(cli.parse(TRAIN_PARAMS, argv))
    assert cfg.pretrained == "none" and cfg.backbone == "smallcnn"


@pytest.mark.parametrize("lr", ["0", "0.0", "-1e-5"])
def test_lr_must_be_positive(lr):
    with pytest.raises(UsageError, match=r"lr=.* out of range; expected > 0"):
        config_from_params(raw(preset="cpu", lr=lr))
    assert config_from_params(raw(preset="cpu", lr="1e-9")).lr == 1e-9


def test_as_float_exclusive_bound():
    with pytest.raises(UsageError):
        as_float("x", "0", gt=0.0)
    assert as_float("x", "0", lo=0.0) == 0.0
