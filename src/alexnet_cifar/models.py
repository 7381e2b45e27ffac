"""The model registry: the AlexNet variants, selectable by name.

- ``paper``: the layers of Krizhevsky et al. (2012) without local response normalisation, as a
  single-GPU network: 96-256-384-384-256 filters, 227x227 input, 9216-4096-4096-N classifier.
- ``paper-lrn``: the same with the paper's local response normalisation after the ReLU of the
  first two convolutions, before their max-pools.
- ``torchvision``: ``torchvision.models.alexnet`` (the "one weird trick" variant, 64-192-384-256-256
  filters, 224x224 input), used as the library builds it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import stand_in
from .config import SettingsError


def paper_lrn() -> nn.LocalResponseNorm:
    """The paper's LRN: k = 2, n = 5, alpha = 1e-4, beta = 0.75, where the paper applies alpha to
    the sum over the 5 channels and PyTorch divides alpha by the size, hence 5 x 1e-4."""
    return nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)


class PaperAlexNet(nn.Module):
    """AlexNet as in the paper, with or without its LRN. Only a 227x227 input gives the 6x6x256 =
    9216 features its first linear layer is built for, so any other size is refused with a clear
    error."""

    input_size = 227

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, lrn: bool = False) -> None:
        super().__init__()
        def norm() -> list[nn.Module]:  # after the ReLU of conv1 and conv2, before their max-pools
            return [paper_lrn()] if lrn else []

        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4),
            nn.ReLU(inplace=True),
            *norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            *norm(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"the 'paper' AlexNet needs {self.input_size}x{self.input_size} inputs, "
                f"got {x.shape[-2]}x{x.shape[-1]}; resize the images to {self.input_size}"
            )
        return self.classifier(torch.flatten(self.features(x), 1))


def torchvision_alexnet(num_classes: int = 10, deterministic: bool = False) -> nn.Module:
    import torchvision  # here, not at the top: importing it takes seconds (its ops import torch._dynamo)

    model = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    if deterministic:
        # At its 224x224 input the features are already 6x6, where the adaptive average pool is
        # the identity; PyTorch has no deterministic CUDA kernel for that pool's backward.
        model.avgpool = nn.Identity()
    return model


@dataclass(frozen=True)
class ModelSpec:
    input_size: int
    #: (num_classes, deterministic) -> a freshly initialised model
    build: Callable[..., nn.Module]


MODELS: dict[str, ModelSpec] = {
    "paper": ModelSpec(227, lambda num_classes, deterministic=False: PaperAlexNet(num_classes)),
    "paper-lrn": ModelSpec(227, lambda num_classes, deterministic=False: PaperAlexNet(num_classes, lrn=True)),
    "torchvision": ModelSpec(224, torchvision_alexnet),
}


class StandInAlexNet(nn.Module):
    """The test suite's stand-in (:mod:`alexnet_cifar.stand_in`): AlexNet's shape, 5 convolutions
    and 3 linear layers with dropout, at a few thousand weights and a 32x32 input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*conv(3, 8), nn.MaxPool2d(2), *conv(8, 8), nn.MaxPool2d(2), *conv(8, 8),
                                      *conv(8, 8), *conv(8, 8), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(8 * 4 * 4, 16), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(16, 16), nn.ReLU(inplace=True),
                                        nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


#: known only while the stand-in's switch is on (:func:`alexnet_cifar.stand_in.enabled`), never in MODELS
STAND_IN = ModelSpec(stand_in.INPUT_SIZE, lambda num_classes, deterministic=False: StandInAlexNet(num_classes))


def get_spec(name: str) -> ModelSpec:
    if name == stand_in.NAME and stand_in.enabled():
        return STAND_IN
    try:
        return MODELS[name]
    except KeyError:
        raise SettingsError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def build_model(name: str, num_classes: int = 10, deterministic: bool = False) -> nn.Module:
    """A freshly initialised model (PyTorch's default initialisation) from the registry."""
    return get_spec(name).build(num_classes=num_classes, deterministic=deterministic)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
