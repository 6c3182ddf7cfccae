"""Units of the training protocol: equal-share batches, balancing, augmentation, models, threshold."""

import numpy as np
import pytest
import torch

from cxrstudy.train.augment import augment, random_affine, sampling_grid
from cxrstudy.train.balancing import hospital_label_balance, parse_balance, size_match
from cxrstudy.data.loader import EqualShareBatches, HospitalPool, shares
from cxrstudy.errors import DataError, UsageError
from cxrstudy.train.models import build_model


def _pool(env, n, prev, seed, size=8):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(n, size, size), dtype=np.uint8)
    return HospitalPool(env, images, np.arange(n), (rng.random(n) < prev).astype(np.int64))


def test_equal_shares_whatever_the_sizes():
    assert shares(128, 2) == [64, 64]
    assert shares(10, 3) == [4, 3, 3]
    batches = EqualShareBatches([_pool("a", 1000, 0.1, 0), _pool("b", 37, 0.5, 1)], 128, seed=0)
    for step in range(5):
        _, y, env = batches.batch(step)
        assert (env == 0).sum() == 64 and (env == 1).sum() == 64


def test_batches_visit_each_example_once_per_epoch_and_are_deterministic():
    pool = _pool("a", 100, 0.3, 0)
    b = EqualShareBatches([pool], 10, seed=3)
    seen = np.concatenate([b.positions(0, s) for s in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    b2 = EqualShareBatches([pool], 10, seed=3)
    for s in (0, 7, 13):
        x1, y1, _ = b.batch(s)
        x2, y2, _ = b2.batch(s)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(EqualShareBatches([pool], 10, seed=4).positions(0, 0), b.positions(0, 0))


def test_batch_images_match_their_labels():
    pool = _pool("a", 50, 0.3, 0)
    x, y, _ = EqualShareBatches([pool], 16, seed=0).batch(2)
    index = {pool.images[i].tobytes(): pool.labels[i] for i in range(50)}
    assert [index[img.tobytes()] for img in x] == y.tolist()


def test_hospital_label_balancing_gives_equal_prevalence_without_duplicates():
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.05).astype(int)
    b = (rng.random(3000) < 0.25).astype(int)
    va = (rng.random(300) < 0.05).astype(int)
    vb = (rng.random(400) < 0.25).astype(int)
    kt, kv, target = hospital_label_balance({"a": a, "b": b}, {"a": va, "b": vb}, seed=0)
    assert target == pytest.approx(b.mean())
    for keep, y in ((kt["a"], a), (kt["b"], b), (kv["a"], va), (kv["b"], vb)):
        assert len(np.unique(keep)) == len(keep)  # no duplicates
        assert y[keep].sum() == y.sum()  # all positives kept
        assert y[keep].mean() == pytest.approx(target, abs=0.01)
    # another seed, another subsample of negatives
    kt2, _, _ = hospital_label_balance({"a": a, "b": b}, {"a": va, "b": vb}, seed=1)
    assert not np.array_equal(kt["a"], kt2["a"])


def test_balancing_without_positives_is_a_clear_error():
    with pytest.raises(DataError, match="a/train/Edema: no positives"):
        hospital_label_balance({"a": np.zeros(10, int), "b": np.ones(10, int)}, {"a": np.ones(3, int),
                               "b": np.ones(3, int)}, seed=0, label="Edema")


def test_size_matched_keeps_base_size_and_prevalences():
    rng = np.random.default_rng(0)
    a = (rng.random(1000) < 0.1).astype(int)
    b = (rng.random(3000) < 0.3).astype(int)
    keep = size_match({"a": a, "b": b}, "a", seed=0)
    assert abs(len(keep["a"]) + len(keep["b"]) - 1000) <= 2
    assert a[keep["a"]].mean() == pytest.approx(a.mean(), abs=0.01)
    assert b[keep["b"]].mean() == pytest.approx(b.mean(), abs=0.01)
    assert parse_balance("Hospital-Label") == "hospital_label"
    with pytest.raises(UsageError, match="expected one of"):
        parse_balance("oversample")


def test_augmentation_parameters_follow_the_protocol():
    theta = random_affine(20000, torch.Generator().manual_seed(0)).double()
    a, b = theta[:, 0, :2], theta[:, 1, :2]
    det = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]  # = flip * w * h: area fraction, sign = flip
    area = det.abs()
    assert area.min() >= 0.75 - 1e-6 - 0.02 and area.max() <= 1.0 + 1e-6
    assert 0.45 < (det < 0).double().mean() < 0.55  # flip with p=0.5
    ang = torch.rad2deg(torch.atan2(b[:, 0] * torch.sign(det), a[:, 0] * torch.sign(det)))
    assert ang.abs().max() <= 10.0 + 1e-4 and ang.abs().max() > 9.5


def test_augment_keeps_shape_and_identity_map_is_exact():
    x = torch.rand(4, 1, 16, 16)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    same = augment(x, torch.Generator().manual_seed(0), max_rotation=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                   flip_p=0.0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone,dim", [("smallcnn", 128), ("stridecnn", 128), ("densenet121", 1024), ("resnet18", 512)])
def test_models_have_two_logits_and_an_embedding(backbone, dim):
    m = build_model(backbone).eval()
    x = torch.rand(2, 1, 32, 32)
    assert m(x).shape == (2, 2)
    assert m.embed(x).shape == (2, dim)


def test_pretrained_imagenet_fails_clearly_when_weights_are_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(DataError, match="never downloads"):
        build_model("densenet121", "imagenet")
    with pytest.raises(DataError, match="file not found"):
        build_model("densenet121", str(tmp_path / "nope.pth"))
    with pytest.raises(UsageError, match="unknown backbone"):
        build_model("vgg11")


def test_pretrained_from_a_local_state_dict(tmp_path):
    import torchvision

    sd = torchvision.models.resnet18().state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    m = build_model("resnet18", str(tmp_path / "r18.pth"))
    torch.testing.assert_close(m.trunk.conv1.weight, sd["conv1.weight"])
    torch.save({"junk": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(DataError, match="missing or mis-shaped"):
        build_model("resnet18", str(tmp_path / "bad.pth"))


def test_sampling_grid_equals_affine_grid():
    import torch.nn.functional as F

    theta = random_affine(7, torch.Generator().manual_seed(3))
    for h, w in ((224, 224), (31, 48)):
        ref = F.affine_grid(theta, [7, 1, h, w], align_corners=False)
        ours = sampling_grid(theta, h, w)
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, atol=1e-6)


def test_chunked_cpu_augment_equals_one_whole_batch_resample():
    import torch.nn.functional as F

    from cxrstudy.train import augment as aug

    x = torch.rand(40, 1, 224, 224)
    out = augment(x, torch.Generator().manual_seed(5))  # 16-image chunks on the CPU
    theta = random_affine(40, torch.Generator().manual_seed(5))
    ref = F.grid_sample(x, sampling_grid(theta, 224, 224), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    assert aug.CPU_CHUNK_PIXELS // (224 * 224) < 40  # the chunked path ran
    assert torch.equal(out, ref)
    # and the same as torchvision-style affine_grid, up to float rounding of the coordinates
    # (2.4e-7 in normalised units, times a gradient of up to ~112 per unit at 224 px)
    via_affine_grid = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear",
                                    padding_mode="zeros", align_corners=False)
    assert (out - via_affine_grid).abs().max() < 1e-4
