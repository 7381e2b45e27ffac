"""Training recipes: the model's input, augmentation, learning-rate schedules, the paper's
initialisation and its weight decay, in one file, so that a reader finds what a recipe does to
the data, the step size and the weights here, and the engine (:mod:`alexnet_cifar.engine`) stays
the step and the loop.

Every setting defaults to the reported protocol (no augmentation, a constant learning rate,
PyTorch's initialisation); at the defaults nothing here draws a random number or changes a value.

- :class:`InputNorm`: uint8 images to the model's input, the write-up's [-1, 1] or the paper's
  0-255 less the training images' mean image (which it carries into the checkpoint).
- :class:`Augmenter`: per-image flips, shifts and the paper's PCA colour noise, on the training
  device, inside the training step (and so inside its CUDA graph), drawn from the run's own
  seeded generator. torchvision's batched transforms draw one random choice per call, not per
  image, so these are written here.
- :class:`LrSchedule`: the learning rate of each epoch (constant, step, plateau, cosine).
- :func:`paper_init`: the 2012 paper's weights N(0, 0.01) and biases of 0 or 1.
- :func:`parameter_groups`: the optimizer's parameter groups, without weight decay on the biases
  where the recipe says so (``bias_decay: false``).
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, check_rng_state
from .config import RunSettings, SettingsError

#: The defaults of the schedules' parameters, used where a setting is unset (null); config/README.md
#: documents them. Step's milestones default to half and three quarters of the epochs.
STEP_GAMMA, PLATEAU_PATIENCE, PLATEAU_MAX_DROPS, COSINE_WARMUP_EPOCHS = 0.1, 5, 3, 0
PLATEAU_FACTOR = 0.1  # lr / 10 at each drop, as the paper did by hand


# -- the model's input ------------------------------------------------------------------------

def mean_image(images_u8: np.ndarray) -> np.ndarray:
    """The mean of ``images_u8`` (N, 3, H, W) per pixel and channel, float32 (3, H, W): exact
    integer sums (no float rounding that depends on the order or the chunks), divided by N."""
    return (images_u8.sum(axis=0, dtype=np.int64) / len(images_u8)).astype(np.float32)


class InputNorm:
    """uint8 images (B, 3, 32, 32) -> the model's float input, still 32x32 (the resize follows).

    - ``half``: (x/255 - 0.5)/0.5, in [-1, 1]: the write-up's ToTensor + Normalize(0.5, 0.5).
    - ``paper``: x - m, x in 0-255 and m the mean image (:func:`mean_image`) of
      ``train_images_u8``, the images the run trains on (validation images are not among them),
      computed once here; validation and test images get the same m.

    The augmentation works in between (:meth:`to_float`, :meth:`finish`): flips and shifts at
    uint8, the colour noise on the float values, whose unit is 1/255 for ``half`` and 1 for
    ``paper`` (:attr:`colour_scale`). The checkpoint carries m (:meth:`state_dict`); a resume
    computes it again from the data and takes the checkpoint only if it holds the same m.
    """

    def __init__(self, settings: RunSettings, train_images_u8: np.ndarray, device: torch.device) -> None:
        self.kind = settings.input_norm
        self.mean: torch.Tensor | None = None  # (3, 32, 32) float32 on the device, for "paper"
        if self.kind == "paper":
            self.mean = torch.from_numpy(mean_image(train_images_u8)).to(device)
        #: what the colour noise, computed on values in [0, 1], is multiplied by
        self.colour_scale = 255.0 if self.kind == "paper" else 1.0

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        """The model's input of images without augmentation."""
        if self.mean is None:
            return images_u8.float().mul_(2.0 / 255.0).sub_(1.0)
        return images_u8.float().sub_(self.mean)

    def to_float(self, images_u8: torch.Tensor) -> torch.Tensor:
        """Images as floats, for the colour noise: in [0, 1] (``half``) or 0-255 (``paper``)."""
        x = images_u8.float()
        return x if self.mean is not None else x.div_(255.0)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`to_float`'s values, perhaps with colour noise, as the model's input."""
        return x.mul_(2.0).sub_(1.0) if self.mean is None else x.sub_(self.mean)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": None if self.mean is None else self.mean.cpu()}

    def check_state(self, saved: Any) -> torch.Tensor | None:
        """The mean image of a checkpoint's part ``saved``, if it is this run's; None (a checkpoint
        written before the part existed) means no mean image. Raises CheckpointError otherwise."""
        saved = {"mean": None} if saved is None else saved
        if not isinstance(saved, dict) or set(saved) != {"mean"}:
            raise CheckpointError("its input_norm part is not a record of the mean image")
        mean = saved["mean"]
        if (mean is None) != (self.mean is None):
            raise CheckpointError(f"its input_norm part has {'no' if mean is None else 'a'} mean image, but this "
                                  f"run (input_norm: {self.kind}) has {'one' if mean is None else 'none'}")
        if mean is None:
            return None
        if not isinstance(mean, torch.Tensor) or mean.dtype != self.mean.dtype or mean.shape != self.mean.shape:
            found = f"{mean.dtype} {tuple(mean.shape)}" if isinstance(mean, torch.Tensor) else type(mean).__name__
            raise CheckpointError(f"its input_norm mean image should be {self.mean.dtype} "
                                  f"{tuple(self.mean.shape)}, found {found}")
        if not torch.equal(mean, self.mean.cpu()):
            gap = float((mean - self.mean.cpu()).abs().max())
            raise CheckpointError(f"its input_norm mean image is not the one of this run's training images "
                                  f"(they differ by up to {gap:.3g})")
        return mean

    def apply_state(self, mean: torch.Tensor | None) -> None:
        """Take a checked mean image (:meth:`check_state`; equal to the one this run computed),
        into the same tensor: a captured CUDA graph reads that one."""
        if mean is not None:
            self.mean.copy_(mean)


# -- augmentation -----------------------------------------------------------------------------

def augmentation_seed(seed: int) -> int:
    """The augmentation generator's seed, derived from the run's seed: a generator seeded like the
    data order's would draw the same stream."""
    return int.from_bytes(hashlib.sha256(f"augment:{seed}".encode()).digest()[:8], "little") >> 1


def rgb_pca(images_u8: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of the 3x3 covariance of the RGB values
    of ``images_u8`` (N, 3, H, W) as pixels in [0, 1], accumulated in float64 over chunks (the
    whole training set at once would take gigabytes)."""
    count, total, outer = 0, np.zeros(3), np.zeros((3, 3))
    for start in range(0, len(images_u8), chunk):
        pixels = images_u8[start:start + chunk].astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
        count += pixels.shape[1]
        total += pixels.sum(axis=1)
        outer += pixels @ pixels.T
    mean = total / count
    covariance = outer / count - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    return eigenvalues[::-1].copy(), eigenvectors[:, ::-1].copy()


class Augmenter:
    """The training images' augmentation, applied to each batch inside the training step.

    Per image and per step, from ``generator`` (on the training device, no host work or sync, so
    a captured CUDA graph draws new values at every replay): a left-right flip with probability
    1/2; a shift by up to ``translate`` pixels in x and y at 32x32, the uncovered border black;
    the paper's colour noise, sum_i alpha_i lambda_i p_i added to every pixel in [0, 1], alpha_i
    ~ N(0, ``pca_colour``), over the eigenvectors p_i and eigenvalues lambda_i of the training
    split's RGB covariance (no clamping). Then the images become the model's input (``norm``, an
    :class:`InputNorm`: by default the run's own) and are resized, as without augmentation. Under
    ``input_norm: paper`` the order is: flip and shift at uint8, to float in 0-255, add 255 x the
    colour noise, subtract the mean image (a black border shifted in is -m). ``generator`` is None
    when every augmentation is off.
    """

    def __init__(self, settings: RunSettings, train_images_u8: np.ndarray, device: torch.device,
                 norm: InputNorm | None = None) -> None:
        self.norm = InputNorm(settings, train_images_u8, device) if norm is None else norm
        self.flip, self.translate = settings.augment_flip, settings.augment_translate
        self.pca_colour = settings.augment_pca_colour
        self.active = self.flip or self.translate > 0 or self.pca_colour > 0
        self.generator: torch.Generator | None = None
        if self.active:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(augmentation_seed(settings.seed))
        self.pca_scale: torch.Tensor | None = None  # eigenvalues x eigenvectors: (3 components, 3 channels)
        if self.pca_colour > 0:
            eigenvalues, eigenvectors = rgb_pca(train_images_u8)
            self.pca_scale = torch.as_tensor(eigenvalues[:, None] * eigenvectors.T, dtype=torch.float32,
                                             device=device)

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        """A batch of uint8 (B, 3, 32, 32) images -> the model's input, augmented, still 32x32."""
        g, batch = self.generator, images_u8.shape[0]
        x = images_u8
        if self.flip:
            mirror = torch.rand(batch, generator=g, device=x.device) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        if self.translate > 0:
            shifts = torch.randint(-self.translate, self.translate + 1, (batch, 2), generator=g, device=x.device)
            x = shift_images(x, shifts, self.translate)
        x = self.norm.to_float(x)
        if self.pca_colour > 0:
            alphas = torch.randn(batch, 3, generator=g, device=x.device).mul_(self.pca_colour)
            x = x + self.colour_noise(alphas)[:, :, None, None]
        return self.norm.finish(x)

    def colour_noise(self, alphas: torch.Tensor) -> torch.Tensor:
        """The RGB offsets that per-component draws ``alphas`` (B, 3) add to every pixel of their
        image, in the unit of :meth:`InputNorm.to_float` (1/255 or 1)."""
        noise = alphas @ self.pca_scale
        return noise if self.norm.colour_scale == 1.0 else noise.mul_(self.norm.colour_scale)

    # -- the state a checkpoint keeps (alexnet_cifar.checkpoint.Stateful) ----------------------
    def state_dict(self) -> dict[str, Any]:
        """The generator's state, under its name among the run's RNG states (``augment``; None
        when nothing is drawn): the trainer keeps it with its own RNG states."""
        return {"augment": None if self.generator is None else self.generator.get_state()}

    def check_state(self, saved: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The ``augment`` state of ``saved`` (the run's RNG states) checked: usable by the
        generator, and there exactly when this run augments."""
        value = saved.get("augment")
        if self.generator is None:
            if value is not None:
                raise CheckpointError("its RNG state 'augment' is there, but this run does not augment")
            return {}
        check_rng_state(value, self.generator.device, "augment")
        return {"augment": value}

    def apply_state(self, checked: Mapping[str, torch.Tensor]) -> None:
        if "augment" in checked:
            self.generator.set_state(checked["augment"])


def shift_images(images: torch.Tensor, shifts: torch.Tensor, limit: int) -> torch.Tensor:
    """Each image of ``images`` (B, C, H, W) moved by its own ``shifts`` (B, 2: dy, dx, each in
    [-limit, limit]) pixels, the uncovered border 0: out[y, x] = in[y - dy, x - dx].

    One gather from a zero-padded copy (index arithmetic on the device: no host sync, so it can sit
    in a CUDA graph); torchvision's RandomCrop draws one offset per call, not per image."""
    b, _, h, w = images.shape
    padded = nn.functional.pad(images, (limit, limit, limit, limit))
    rows = torch.arange(h, device=images.device)[None, :] - shifts[:, :1] + limit  # (B, H)
    cols = torch.arange(w, device=images.device)[None, :] - shifts[:, 1:] + limit  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, H, W, C) -> NCHW


# -- learning-rate schedules ------------------------------------------------------------------

def schedule_parameters(settings: RunSettings) -> dict[str, Any]:
    """The parameters of the run's schedule, each the setting or, where unset, its default."""
    s, epochs = settings, settings.epochs
    if s.lr_schedule == "step":
        milestones = s.lr_milestones if s.lr_milestones is not None else \
            sorted({m for m in (epochs // 2, 3 * epochs // 4) if m >= 1})
        return {"lr_milestones": list(milestones), "lr_gamma": s.lr_gamma if s.lr_gamma is not None else STEP_GAMMA}
    if s.lr_schedule == "plateau":
        return {"lr_patience": s.lr_patience if s.lr_patience is not None else PLATEAU_PATIENCE,
                "lr_max_drops": s.lr_max_drops if s.lr_max_drops is not None else PLATEAU_MAX_DROPS}
    if s.lr_schedule == "cosine":
        return {"warmup_epochs": s.warmup_epochs if s.warmup_epochs is not None else COSINE_WARMUP_EPOCHS}
    return {}


class LrSchedule:
    """The learning rate of every epoch (epochs count from 1; E = ``epochs``, lr = ``settings.lr``):

    - ``constant``: lr.
    - ``step``: lr x gamma^k, k the number of milestones m < e (PyTorch's MultiStepLR: the drop
      applies from epoch m + 1).
    - ``plateau``: after an epoch whose validation accuracy is not above the best so far for
      ``lr_patience`` epochs in a row, lr / 10 and the count restarts, at most ``lr_max_drops``
      times. The only schedule with a state (:meth:`state_dict`), which :meth:`observe` advances.
    - ``cosine``: lr x e / w for e <= w, then lr x (1 + cos(pi (e - w - 1) / (E - w))) / 2,
      w = ``warmup_epochs``; never 0.

    The learning rate changes at most once an epoch, between epochs.
    """

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        self.kind, self.base, self.epochs = settings.lr_schedule, settings.lr, settings.epochs
        self.params = schedule_parameters(settings)
        self.drops, self.best, self.bad_epochs = 0, None, 0  # the plateau's state

    def lr(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (for ``plateau``: given the epochs observed so far)."""
        if self.kind == "step":
            k = sum(m < epoch for m in self.params["lr_milestones"])
            return self.base * self.params["lr_gamma"] ** k
        if self.kind == "plateau":
            return self.base * PLATEAU_FACTOR ** self.drops
        if self.kind == "cosine":
            w = self.params["warmup_epochs"]
            if epoch <= w:
                return self.base * epoch / w
            return self.base * 0.5 * (1 + math.cos(math.pi * (epoch - w - 1) / (self.epochs - w)))
        return self.base

    def observe(self, val_acc: float | None) -> None:
        """Take an epoch's validation accuracy into account (only ``plateau`` uses it)."""
        if self.kind != "plateau":
            return
        if val_acc is None:
            raise ValueError("the plateau schedule needs the validation accuracy of every epoch")
        if self.best is None or val_acc > self.best:
            self.best, self.bad_epochs = val_acc, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.params["lr_patience"] and self.drops < self.params["lr_max_drops"]:
            self.drops, self.bad_epochs = self.drops + 1, 0

    # -- the state a checkpoint keeps (alexnet_cifar.checkpoint.Stateful) ----------------------
    def state_dict(self) -> dict[str, Any]:
        return {"drops": self.drops, "best": self.best, "bad_epochs": self.bad_epochs}

    def check_state(self, saved: Any, *, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``saved`` checked against the schedule after the epochs of ``history``, replayed: each
        epoch's lr must be the schedule's, and ``saved`` the state the replay ends in."""
        try:
            replayed = LrSchedule.replayed(self.settings, history)
        except ValueError as exc:
            raise CheckpointError(f"its history does not follow the lr schedule: {exc}") from None
        if saved != replayed.state_dict():
            raise CheckpointError(f"its schedule state {saved!r} is not the one its history gives, "
                                  f"{replayed.state_dict()!r}")
        return replayed.state_dict()

    def apply_state(self, checked: Mapping[str, Any]) -> None:
        self.drops, self.best, self.bad_epochs = checked["drops"], checked["best"], checked["bad_epochs"]

    @classmethod
    def replayed(cls, settings: RunSettings, records: Sequence[Mapping[str, Any]]) -> LrSchedule:
        """The schedule after the epochs of ``records`` (a history): what a checkpoint must hold.
        Raises ValueError at the first record whose lr is not the schedule's."""
        schedule = cls(settings)
        for record in records:
            expected = schedule.lr(record["epoch"])
            if record["lr"] != expected:
                raise ValueError(f"epoch {record['epoch']} trained at lr {record['lr']!r}, the schedule "
                                 f"gives {expected!r}")
            schedule.observe(record.get("val_acc"))
        return schedule


# -- the paper's initialisation ---------------------------------------------------------------

#: Layers (by position: convolutions 1-5, then the linear layers fc6, fc7, fc8) whose bias the
#: paper sets to 1, "to accelerate the early stages of learning by providing the ReLUs with
#: positive inputs"; every other bias is 0.
PAPER_BIAS_ONE = {"conv": (2, 4, 5), "linear": (1, 2)}


def paper_init(model: nn.Module) -> None:
    """Every weight from N(0, 0.01), the biases of conv2, conv4, conv5, fc6 and fc7 1, the others 0
    (Krizhevsky et al. 2012, section 5). Layers are found by position, so the torchvision model,
    whose layers differ in width, is initialised the same way."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if (len(convs), len(linears)) != (5, 3):
        raise SettingsError(f"init: paper needs AlexNet's 5 convolutions and 3 linear layers, this model has "
                            f"{len(convs)} and {len(linears)}")
    with torch.no_grad():
        for kind, layers in (("conv", convs), ("linear", linears)):
            for position, layer in enumerate(layers, 1):
                layer.weight.normal_(0.0, 0.01)
                layer.bias.fill_(1.0 if position in PAPER_BIAS_ONE[kind] else 0.0)


# -- the paper's weight decay -----------------------------------------------------------------

def parameter_groups(model: nn.Module, settings: RunSettings) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: every parameter in one group (weight decay on all, as
    PyTorch's SGD does), or with ``bias_decay: false`` the biases of the convolutions and linear
    layers in a second group without weight decay (the paper's update rule, Section 5, decays the
    weights; its code, cuda-convnet, applies the coefficient to weights only)."""
    if settings.bias_decay:
        return [{"params": list(model.parameters())}]
    biases = {id(m.bias) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None}
    return [{"params": [p for p in model.parameters() if id(p) not in biases]},
            {"params": [p for p in model.parameters() if id(p) in biases], "weight_decay": 0.0}]
