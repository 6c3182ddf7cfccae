"""Backbones with a 2-output head, taking 1-channel images in [0, 1].

Every model takes ``(N, 1, S, S)`` float images in [0, 1] (the cache is grayscale); the
torchvision backbones repeat them to 3 channels and apply the ImageNet mean/std inside the
network, the small networks of our own read the one channel as it is, so the logged MLflow model
needs no separate preprocessing. ``forward`` returns 2 logits; ``embed`` returns the
penultimate representation (DenseNet-121: 1024-d, after the final ReLU and global average
pooling) that the hospital probe reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrstudy.errors import DataError, UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
BACKBONES = ("densenet121", "resnet18", "resnet50", "efficientnet_b0", "smallcnn", "stridecnn")
_WEIGHTS = {
    "densenet121": "DenseNet121_Weights",
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "efficientnet_b0": "EfficientNet_B0_Weights",
}


class SmallCNN(nn.Module):
    """A CPU-friendly convolutional network (~0.1M parameters) for the demo and the tests."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width // 2, width, width * 2, width * 4]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            # pooling before the ReLU: the same function (ReLU is monotone, so it commutes with a max)
            # and the same gradients, with the ReLU on a quarter of the values; the state dict's keys
            # are those of conv-BN-ReLU-pool, since neither holds parameters
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.MaxPool2d(2), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


class StrideCNN(nn.Module):
    """The ``cpu`` preset's network: SmallCNN's widths with stride-2 convolutions in place of max pooling.

    Each block computes at its output resolution (conv stride 2 - BN - ReLU; the last one a 2x2
    patch merge, which on a 4x4 map sees what a padded 3x3 kernel would, at less than half its
    cost), so a 32 px image costs about a quarter of SmallCNN's multiply-adds and none of its pooling
    or full-resolution batch-norm passes, most of SmallCNN's step on a CPU (benchmarks/TRAINING.md).
    It reads the grayscale image as it is (``in_channels = 1``): trained from scratch, it needs
    neither the three channels nor the ImageNet statistics that pretrained backbones expect.
    """

    in_channels = 1

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [1, width // 2, width, width * 2, width * 4]
        layers = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            last = i == len(chans) - 2
            layers += [nn.Conv2d(cin, cout, 2 if last else 3, stride=2, padding=0 if last else 1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


#: the networks of our own, trained from scratch (no pretrained weights exist for them)
_SMALL = {"smallcnn": SmallCNN, "stridecnn": StrideCNN}


class PooledTrunk(nn.Module):
    """torchvision ``features`` -> (ReLU) -> global average pooling -> flat embedding."""

    def __init__(self, features: nn.Module, relu: bool):
        super().__init__()
        self.features = features
        self.relu = relu

    def forward(self, x):
        x = self.features(x)
        if self.relu:
            x = F.relu(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _trunk(backbone: str, net: nn.Module | None = None) -> tuple[nn.Module, int]:
    """The embedding trunk of a (possibly pretrained) torchvision network and its output size."""
    import torchvision.models as tvm

    if backbone in _SMALL:
        t = _SMALL[backbone]()
        return t, t.out_dim
    net = net if net is not None else getattr(tvm, backbone)(weights=None)
    if backbone == "densenet121":  # DenseNet's forward applies the final ReLU outside `features`
        return PooledTrunk(net.features, relu=True), net.classifier.in_features
    if backbone.startswith("resnet"):
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim
    return PooledTrunk(net.features, relu=False), net.classifier[1].in_features


class BinaryClassifier(nn.Module):
    def __init__(self, backbone: str = "densenet121", _net: nn.Module | None = None):
        super().__init__()
        if backbone not in BACKBONES:
            raise UsageError(f"unknown backbone {backbone!r}; expected one of: {', '.join(BACKBONES)}")
        self.backbone_name = backbone
        self.trunk, self.embed_dim = _trunk(backbone, _net)
        self.head = nn.Linear(self.embed_dim, 2)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self.trunk, "in_channels", 3) == 1:  # a network of our own that reads the image as it is
            return self.trunk(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.trunk((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _load_state(path: Path, what: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{what}: cannot load {path} as a state dict ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"{what}: {path} holds a {type(state).__name__}; expected a state dict (name -> tensor)")
    return state


def imagenet_weights_path(backbone: str) -> Path:
    import torchvision.models as tvm

    weights = getattr(tvm, _WEIGHTS[backbone]).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def normalise_pretrained(value) -> str:
    """``none``/``imagenet`` in any case (``null`` = ``none``) -> lower case; a path as given."""
    p = str(value).strip()
    if p.lower() in ("none", "null"):
        return "none"
    return p.lower() if p.lower() == "imagenet" else p


def check_pretrained(backbone: str, pretrained: str) -> None:
    """Fail before any work when ``pretrained`` cannot be loaded for ``backbone`` (missing or garbage
    file, ImageNet weights absent): the same checks :func:`build_model` makes, run up front."""
    if normalise_pretrained(pretrained) == "none":
        return
    try:
        build_model(backbone, pretrained)
    except DataError as e:
        raise UsageError(str(e)) from None


def build_model(backbone: str, pretrained: str = "none") -> BinaryClassifier:
    """A fresh classifier. ``pretrained``: ``none``; ``imagenet`` (torchvision's weights, which must
    already be in the local torch hub cache: nothing is downloaded at run time); or a path to a
    torchvision state dict for that backbone. The 2-output head is always new."""
    p = str(pretrained).strip()
    if p.lower() in ("", "none"):
        return BinaryClassifier(backbone)
    if backbone not in BACKBONES:
        raise UsageError(f"unknown backbone {backbone!r}; expected one of: {', '.join(BACKBONES)}")
    if backbone in _SMALL:
        raise UsageError(f"backbone {backbone} has no pretrained weights; use pretrained=none")
    if p.lower() == "imagenet":
        path = imagenet_weights_path(backbone)
        if not path.is_file():
            raise DataError(
                f"pretrained=imagenet: the ImageNet weights for {backbone} are not on this machine "
                f"(expected {path}); cxrstudy never downloads at run time. Copy the file there, pass "
                f"pretrained=/path/to/state_dict.pth, or use pretrained=none")
    else:
        path = Path(p).expanduser()
        if not path.is_file():
            raise DataError(f"pretrained={p}: file not found; expected none, imagenet or a path to a state dict")
    import torchvision.models as tvm

    net = getattr(tvm, backbone)(weights=None)
    state = _load_state(path, f"pretrained={p}")
    # torchvision's published DenseNet files use old key names ('norm.1'); torchvision renames them too.
    state = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    trunk_keys = [k for k in own if not k.startswith(("classifier", "fc.")) and not k.endswith("num_batches_tracked")]
    missing = [k for k in trunk_keys if k not in usable]
    if missing:
        raise DataError(f"pretrained={p}: {len(missing)} of {len(trunk_keys)} {backbone} trunk weights are "
                        f"missing or mis-shaped in {path} (e.g. {missing[0]})")
    net.load_state_dict(usable, strict=False)
    return BinaryClassifier(backbone, _net=net)
