"""Training recipes on the CPU: per-image augmentation, the schedules' learning rates, the paper's
initialisation, the validation split, and how the engine uses them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tiny_model
import torch

from alexnet_cifar import recipes
from alexnet_cifar.config import RunSettings, SettingsError
from alexnet_cifar.data import CLASSES, Cifar10Arrays, DataError, validation_split
from alexnet_cifar.engine import Evaluation, Trainer, fit
from alexnet_cifar.models import build_model
from alexnet_cifar.recipes import Augmenter, LrSchedule, paper_init, rgb_pca, shift_images


def arrays(n_train=8, n_test=4, seed=0) -> Cifar10Arrays:
    rng = np.random.default_rng(seed)
    return Cifar10Arrays(rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
                         np.arange(n_train, dtype=np.int64) % 10,
                         rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
                         np.arange(n_test, dtype=np.int64) % 10)


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` (C, H, W) moved by (dy, dx) pixels, the uncovered border 0 (written the slow way)."""
    out = np.zeros_like(image)
    _, h, w = image.shape
    for y in range(h):
        for x in range(w):
            if 0 <= y - dy < h and 0 <= x - dx < w:
                out[:, y, x] = image[:, y - dy, x - dx]
    return out


# -- augmentation -----------------------------------------------------------------------------

def test_shift_images_moves_each_image_by_its_own_offset_with_a_black_border():
    images = torch.from_numpy(arrays(n_train=5).train_images)
    shifts = torch.tensor([[0, 0], [4, -4], [-3, 2], [1, 0], [-4, -4]])
    out = shift_images(images, shifts, limit=4)
    for image, (dy, dx), result in zip(images.numpy(), shifts.tolist(), out.numpy(), strict=True):
        np.testing.assert_array_equal(result, shifted(image, dy, dx))


def identify(original: np.ndarray, augmented: np.ndarray, limit: int) -> list[tuple[bool, int, int]]:
    """Every (flipped, dy, dx) that turns ``original`` into ``augmented``."""
    return [(flip, dy, dx) for flip in (False, True) for dy in range(-limit, limit + 1)
            for dx in range(-limit, limit + 1)
            if np.array_equal(shifted(original[:, :, ::-1] if flip else original, dy, dx), augmented)]


def test_flips_and_shifts_are_drawn_per_image_and_move_each_image_exactly():
    data = arrays(n_train=32)
    augment = Augmenter(RunSettings(model="paper", augment_flip=True, augment_translate=3), data.train_images,
                        torch.device("cpu"))
    batch = torch.from_numpy(data.train_images)
    seen = []
    for _ in range(2):  # two steps: new draws each time
        out = augment(batch)
        as_u8 = ((out + 1) / 2 * 255).round().to(torch.uint8).numpy()  # back from [-1, 1]
        for original, result in zip(data.train_images, as_u8, strict=True):
            (transform,) = identify(original, result, limit=3)  # exactly one flip and shift explains it
            seen.append(transform)
    first, second = seen[:32], seen[32:]
    assert len(set(first)) > 8, "one batch: different flips and shifts for different images"
    assert {flip for flip, _, _ in first} == {True, False}
    assert first != second, "the next step draws anew"
    assert {dy for _, dy, _ in seen} <= set(range(-3, 4)) and len({dy for _, dy, _ in seen}) >= 5


def test_augmentation_is_repeatable_from_the_run_s_seed_and_off_by_default():
    data, cpu = arrays(n_train=8), torch.device("cpu")
    settings = RunSettings(model="paper", augment_flip=True, augment_translate=2, augment_pca_colour=0.1, seed=3)
    batch = torch.from_numpy(data.train_images)
    a, b = Augmenter(settings, data.train_images, cpu), Augmenter(settings, data.train_images, cpu)
    assert torch.equal(a(batch), b(batch))
    other = Augmenter(RunSettings(model="paper", augment_flip=True, augment_translate=2, augment_pca_colour=0.1,
                                  seed=4), data.train_images, cpu)
    assert not torch.equal(a(batch), other(batch))
    default = Augmenter(RunSettings(model="paper"), data.train_images, cpu)
    assert not default.active and default.generator is None  # nothing drawn, nothing changed


def test_rgb_pca_is_the_covariance_of_the_pixels_in_0_1():
    images = arrays(n_train=40).train_images
    eigenvalues, eigenvectors = rgb_pca(images, chunk=7)  # chunks that do not divide the set
    pixels = images.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    covariance = np.cov(pixels, bias=True)
    np.testing.assert_allclose(eigenvectors @ np.diag(eigenvalues) @ eigenvectors.T, covariance, atol=1e-12)
    assert list(eigenvalues) == sorted(eigenvalues, reverse=True)


def test_pca_colour_noise_is_zero_mean_and_along_the_eigenvectors_with_the_set_spread():
    """A grey batch with only the colour noise on: each image gets one RGB offset, sum_i alpha_i
    lambda_i p_i. Over many draws the offsets average 0, and their coordinates on the training
    split's eigenvectors p_i are lambda_i times draws of standard deviation sigma."""
    rng = np.random.default_rng(1)
    base = rng.normal(128, 1, (3, 1)) + rng.normal(0, 30, (3, 3)) @ rng.normal(0, 1, (3, 2000))
    train = np.clip(base, 0, 255).astype(np.uint8).reshape(3, 2000, 1, 1).transpose(1, 0, 2, 3)
    train = np.ascontiguousarray(np.broadcast_to(train, (2000, 3, 32, 32)))  # coloured: a real covariance
    sigma, n = 0.1, 4000
    augment = Augmenter(RunSettings(model="paper", augment_pca_colour=sigma), train, torch.device("cpu"))
    grey = torch.full((n, 3, 32, 32), 128, dtype=torch.uint8)
    out = augment(grey)
    offsets = ((out + 1) / 2 - 128 / 255).double()
    assert torch.allclose(offsets, offsets[:, :, :1, :1].expand_as(offsets), atol=1e-6)  # one offset an image
    offsets = offsets[:, :, 0, 0].numpy()
    eigenvalues, eigenvectors = rgb_pca(train)
    assert np.abs(offsets.mean(axis=0)).max() < 4 * sigma * eigenvalues[0] / math.sqrt(n)
    coordinates = offsets @ eigenvectors / eigenvalues  # the draws alpha_i
    np.testing.assert_allclose(coordinates.std(axis=0), sigma, rtol=0.06)
    assert abs(np.corrcoef(coordinates.T)[0, 1]) < 0.06  # independent draws per component


# -- schedules --------------------------------------------------------------------------------

def lrs(settings: RunSettings, val_accs=None) -> list[float]:
    schedule, out = LrSchedule(settings), []
    for epoch in range(1, settings.epochs + 1):
        out.append(schedule.lr(epoch))
        schedule.observe(None if val_accs is None else val_accs[epoch - 1])
    return out


def test_constant_and_step_schedules_are_their_closed_forms_and_pytorch_s_multisteplr():
    assert lrs(RunSettings(model="paper", epochs=4, lr=0.01)) == [0.01] * 4
    settings = RunSettings(model="paper", epochs=8, lr=0.1, lr_schedule="step", lr_milestones=(2, 5), lr_gamma=0.5)
    assert lrs(settings) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025], rel=1e-12)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    multistep = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 5], gamma=0.5)
    expected = []
    for _ in range(8):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        multistep.step()
    assert lrs(settings) == pytest.approx(expected, rel=1e-12)
    # unset: gamma 0.1 at half and three quarters of the epochs
    assert recipes.schedule_parameters(RunSettings(model="paper", epochs=50, lr_schedule="step")) == {
        "lr_milestones": [25, 37], "lr_gamma": 0.1}


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_cosine_schedule_is_its_closed_form_and_never_zero(warmup):
    epochs, lr = 10, 0.2
    got = lrs(RunSettings(model="paper", epochs=epochs, lr=lr, lr_schedule="cosine", warmup_epochs=warmup))
    expected = [lr * e / warmup if e <= warmup else
                lr * 0.5 * (1 + math.cos(math.pi * (e - warmup - 1) / (epochs - warmup))) for e in range(1, epochs + 1)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert min(got) > 0 and got[warmup] == pytest.approx(lr)  # the peak right after the warm-up


def test_plateau_drops_by_ten_after_patience_epochs_without_a_better_validation_accuracy():
    settings = RunSettings(model="paper", epochs=10, lr=1.0, lr_schedule="plateau", lr_patience=2, lr_max_drops=2,
                           validation_images=100)
    val = [10, 20, 20, 19, 30, 30, 31, 31, 30, 30]
    # e1 best 10; e2 best 20; e3, e4 not above 20: drop after e4; e5 best 30; e6 no; e7 best 31;
    # e8, e9 not above 31: drop after e9 (the second and last); e10 no further drop possible
    assert lrs(settings, val) == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01])
    schedule = LrSchedule.replayed(settings, [{"epoch": e, "lr": lr, "val_acc": v} for e, (lr, v) in
                                              enumerate(zip(lrs(settings, val)[:4], val, strict=False), 1)])
    assert schedule.state_dict() == {"drops": 1, "best": 20, "bad_epochs": 0}
    wrong = [{"epoch": 1, "lr": 1.0, "val_acc": 1.0}, {"epoch": 2, "lr": 0.5, "val_acc": 2.0}]
    with pytest.raises(ValueError, match="epoch 2 trained at lr 0.5"):
        LrSchedule.replayed(settings, wrong)


def test_the_engine_lowers_the_lr_when_validation_stalls_and_records_each_epoch_s_lr(tmp_path, monkeypatch):
    """A stand-in evaluation whose validation accuracy never improves: with patience 1 the lr drops
    after every epoch but the first, until the drops run out; the history says each epoch's lr."""
    def stalled(self, split="test"):
        return Evaluation(2.0, 50.0, torch.zeros(len(self.test_y if split == "test" else self.val_y)))

    monkeypatch.setattr(Trainer, "evaluate", stalled)
    with tiny_model.registered() as model:
        settings = RunSettings(model=model, epochs=5, lr=0.01, device="cpu", lr_schedule="plateau", lr_patience=1,
                               lr_max_drops=2, validation_images=2)
        history, _ = fit(settings, arrays(n_train=6), tmp_path, torch.device("cpu"), data_md5="md5",
                         log=lambda _: None)
    assert [r["lr"] for r in history] == pytest.approx([0.01, 0.01, 0.001, 0.0001, 0.0001])
    assert [r["val_acc"] for r in history] == [50.0] * 5


# -- the paper's initialisation ---------------------------------------------------------------

@pytest.mark.parametrize("model", ["paper", "torchvision"])
def test_paper_init_draws_weights_with_sd_0_01_and_sets_the_paper_s_biases(model):
    torch.manual_seed(0)
    net = build_model(model)
    paper_init(net)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    for layer in convs + linears:
        w = layer.weight.detach().double()
        assert abs(w.mean()) < 5 * 0.01 / math.sqrt(w.numel())
        assert w.std() == pytest.approx(0.01, rel=0.1 if w.numel() < 50_000 else 0.01)
    biases = [float(layer.bias.unique().item()) for layer in convs + linears]  # one value per layer
    assert biases == [0, 1, 0, 1, 1, 1, 1, 0]  # conv1-conv5, fc6, fc7, fc8


# -- the validation split ---------------------------------------------------------------------

def test_the_validation_split_is_class_balanced_disjoint_and_the_same_for_every_seed():
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    train, val = validation_split(labels, 95)
    assert len(val) == 95 and len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    counts = np.bincount(labels[val], minlength=len(CLASSES))
    assert counts.max() - counts.min() == 1 and counts.sum() == 95
    assert list(train) == sorted(train)  # the training images keep their order
    data = arrays(n_train=40)
    held = [Trainer(RunSettings(model="torchvision", seed=seed, validation_images=10, device="cpu"), data,
                    torch.device("cpu")).val_index for seed in (0, 1, 7)]
    assert all(np.array_equal(held[0], h) for h in held)  # independent of the run's seed
    trainer = Trainer(RunSettings(model="torchvision", validation_images=10, device="cpu"), data, torch.device("cpu"))
    assert trainer.train_x.shape[0] == 30 and trainer.val_x.shape[0] == 10
    assert torch.equal(trainer.val_x, torch.from_numpy(data.train_images[held[0]]))  # never trained on


def test_a_class_short_of_images_gives_its_share_to_the_others():
    labels = np.array([0] * 2 + [1] * 20 + [2] * 20)
    _, val = validation_split(labels, 12)
    assert list(np.bincount(labels[val], minlength=3)) == [2, 5, 5]
    with pytest.raises(DataError, match="validation_images: 43 asked for, but the training split has only 42"):
        validation_split(labels, 43)


def test_validation_that_leaves_no_full_training_batch_is_refused_at_the_start_of_training(tmp_path):
    settings = RunSettings(model="torchvision", epochs=1, batch_size=4, validation_images=6, device="cpu")
    with pytest.raises(SettingsError, match=r"^validation_images: 6 held out leaves 2 training image\(s\), fewer "
                                            r"than one batch of 4; lower validation_images or batch_size$"):
        fit(settings, arrays(n_train=8), tmp_path, torch.device("cpu"), data_md5="md5", log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_tta_flip_averages_each_image_s_logits_with_its_mirror_s():
    data = arrays(n_train=8, n_test=6)
    trainer = Trainer(RunSettings(model="torchvision", tta_flip=True, eval_batch_size=4, device="cpu"), data,
                      torch.device("cpu"))
    result = trainer.evaluate("test")
    trainer.model.eval()
    with torch.no_grad():
        from alexnet_cifar.engine import to_model_input
        x = to_model_input(trainer.test_x, trainer.input_size)
        logits = 0.5 * (trainer.model(x) + trainer.model(x.flip(-1)))
    expected_loss = torch.nn.functional.cross_entropy(logits, trainer.test_y).item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert torch.equal(result.predicted, logits.argmax(1))
    assert result.acc == pytest.approx(100 * (logits.argmax(1) == trainer.test_y).float().mean().item())
