"""A stand-in AlexNet for the test suite only: AlexNet's shape (5 convolutions, 3 linear layers,
dropout) at a few thousand weights and 32x32 inputs, so that a step takes milliseconds and a
checkpoint kilobytes, not a second and half a gigabyte.

It exists only while the environment variable :data:`SWITCH` is ``1`` (``tests/conftest.py`` sets
it, so the tests' subprocesses, Snakemake and its jobs, inherit it). Without it the name is refused
like any unknown model; the schema file, the config README and a user's CLI choices never list it.
Torch-free (the config module asks :func:`enabled` while building the job graph); the network
itself is :class:`alexnet_cifar.models.StandInAlexNet`.
"""
from __future__ import annotations

import os

#: the stand-in's model name
NAME = "tiny-alexnet"
#: the environment variable that switches the stand-in on (value ``1``)
SWITCH = "ALEXNET_CIFAR_STAND_IN"
#: its input size: CIFAR-10's own, so the resize is the identity
INPUT_SIZE = 32


def enabled() -> bool:
    return os.environ.get(SWITCH) == "1"

