"""A stand-in AlexNet for tests of the checkpoint and the loop, where the network's size does not
matter: AlexNet's shape (5 convolutions, 3 linear layers, dropout) at a few thousand weights and
32x32 inputs, so that a step takes milliseconds and a checkpoint kilobytes, not a second and
half a gigabyte. Registered under :data:`NAME` for the duration of :func:`registered`."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from torch import nn

from alexnet_cifar import models

NAME = "tiny-alexnet"


class TinyAlexNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*conv(3, 8), nn.MaxPool2d(2), *conv(8, 8), nn.MaxPool2d(2), *conv(8, 8),
                                      *conv(8, 8), *conv(8, 8), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(8 * 4 * 4, 16), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(16, 16), nn.ReLU(inplace=True),
                                        nn.Linear(16, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@contextlib.contextmanager
def registered() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(models.MODELS, NAME, models.ModelSpec(
            32, lambda num_classes, deterministic=False: TinyAlexNet(num_classes)))
        yield NAME
