"""The stand-in AlexNet for tests where the network's size does not matter (the checkpoint, the
loop, the bookkeeping of a workflow run): ``alexnet_cifar.models.StandInAlexNet``, a few thousand
weights at 32x32, so that a step takes milliseconds and a checkpoint kilobytes. conftest.py
switches it on for the whole session (and every subprocess); :func:`registered` makes sure of it
in one block, for the tests written before the switch."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from alexnet_cifar import stand_in

NAME = stand_in.NAME


@contextlib.contextmanager
def registered() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(stand_in.SWITCH, "1")
        yield NAME
