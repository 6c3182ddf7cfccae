"""What made the CPU training faster (issue 21) keeps the models what they were meant to be: pooling
before the ReLU is the same network, the training is the same whatever the process's threads, its
time is accounted by phase, and the precision is one property of the machine."""

import copy

import torch

from cxrstudy.train.device import autocast, cpu_has_bf16, place_model, precision
from cxrstudy.train.loop import PHASES, prepare_data, train_model
from cxrstudy.train.models import SmallCNN, build_model
from test_train_evaluate import tiny_config

CPU = torch.device("cpu")


def test_small_cnn_pools_before_the_relu_with_the_same_outputs_gradients_and_keys():
    torch.manual_seed(0)
    now = SmallCNN()
    before = copy.deepcopy(now)
    f = before.features
    for i in range(0, len(f), 4):  # the order it had: conv, BN, ReLU, pool
        assert isinstance(f[i + 2], torch.nn.MaxPool2d) and isinstance(f[i + 3], torch.nn.ReLU)
        f[i + 2], f[i + 3] = f[i + 3], f[i + 2]
    assert now.state_dict().keys() == before.state_dict().keys()
    x = torch.randn(8, 3, 32, 32)
    outs = []
    for net in (now, before):
        xi = x.clone().requires_grad_(True)
        out = net(xi)
        out.pow(2).sum().backward()
        outs.append((out.detach(), xi.grad, [p.grad for p in net.parameters()]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])
    for a, b in zip(outs[0][2], outs[1][2]):
        assert torch.equal(a, b)


def test_weights_are_bit_identical_whatever_the_threads_outside_the_training(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=6, eval_every=3)
    data = prepare_data(cfg, progress=False)
    before = torch.get_num_threads()
    states = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            out = train_model(cfg, data, device=CPU, checkpoint_dir=tmp_path / f"t{threads}", progress=False)
            states.append(out.best_state)
    finally:
        torch.set_num_threads(before)
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_the_loop_accounts_its_time_by_phase_and_logs_it(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=4, eval_every=2)
    data = prepare_data(cfg, progress=False)
    out = train_model(cfg, data, device=CPU, checkpoint_dir=tmp_path / "ck", progress=False)
    assert tuple(out.seconds) == PHASES
    assert all(v >= 0 for v in out.seconds.values())
    assert out.seconds["forward_backward"] > 0 and out.seconds["validation"] > 0
    assert 4 * 16 / sum(out.seconds.values()) >= out.images_per_s * 0.99  # the phases cover the loop's time
    logged = out.metrics()
    assert {f"time/{p}_s" for p in PHASES} <= set(logged)


def test_precision_is_the_machines_and_the_model_runs_channels_last():
    assert precision(CPU) == ("bf16" if cpu_has_bf16() else "fp32")
    with autocast(CPU):
        assert torch.is_autocast_enabled("cpu") == (precision(CPU) == "bf16")
        if precision(CPU) == "bf16":
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    model = place_model(build_model("smallcnn"), CPU)
    conv = model.trunk.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_benchmark_names_an_unknown_part_in_one_line_before_any_work(store, capsys):
    import importlib.util
    from pathlib import Path

    import pytest

    path = Path(__file__).resolve().parents[1] / "entrypoints" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("_benchmark_entry_only", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as e:
        mod.main(["--only", "training,nonsense"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only" in err[0] and "nonsense" in err[0] and "training" in err[0]
