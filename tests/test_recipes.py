"""Training recipes on the CPU: per-image augmentation, the schedules' learning rates, the paper's
initialisation, the validation split, and how the engine uses them."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import tiny_model
import torch

from alexnet_cifar import engine, recipes
from alexnet_cifar.config import RunSettings, SettingsError
from alexnet_cifar.data import CLASSES, Cifar10Arrays, DataError, validation_split
from alexnet_cifar.engine import Evaluation, Trainer, fit
from alexnet_cifar.models import build_model
from alexnet_cifar.recipes import Augmenter, LrSchedule, paper_init, rgb_pca, shift_images

REPO = Path(__file__).resolve().parents[1]


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


# -- the paper's input ------------------------------------------------------------------------

class ResizeInputs:
    """Records what the engine hands to the resize (``F.interpolate``): the input at 32x32."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[torch.Tensor] = []
        resize = engine.F.interpolate

        def recording(x, *args, **kwargs):
            self.seen.append(x.detach().clone())
            return resize(x, *args, **kwargs)

        monkeypatch.setattr(engine.F, "interpolate", recording)


def trained_mean(images: np.ndarray) -> torch.Tensor:
    """The mean image written the plain way: float64 mean over the images, then float32."""
    return torch.from_numpy(images.astype(np.float64).mean(axis=0).astype(np.float32))


def test_under_paper_a_batch_is_x_minus_the_mean_of_the_trained_images_before_the_resize(tiny, monkeypatch):
    data = arrays(n_train=24)
    trainer = Trainer(RunSettings(model=tiny, input_norm="paper", validation_images=6, batch_size=4, device="cpu"),
                      data, torch.device("cpu"))
    keep, held = validation_split(data.train_labels, 6)
    m = trained_mean(data.train_images[keep])
    assert torch.equal(trainer.input_norm.mean, m)  # the trained images' mean ...
    assert not torch.allclose(m, trained_mean(data.train_images), atol=0.1)  # ... not that of all of them
    resize = ResizeInputs(monkeypatch)
    idx = torch.tensor([3, 0, 7, 11])
    trainer.train_step(idx)
    (x,) = resize.seen
    assert torch.equal(x, torch.from_numpy(data.train_images[keep][idx.numpy()]).float() - m)
    assert x.abs().max() > 64  # the 0-255 scale, not [-1, 1]


def test_evaluation_uses_the_training_images_mean_and_mirrors_the_image_not_the_mean(tiny, monkeypatch):
    data = arrays(n_train=24, n_test=6)
    trainer = Trainer(RunSettings(model=tiny, input_norm="paper", validation_images=6, tta_flip=True,
                                  eval_batch_size=6, device="cpu"), data, torch.device("cpu"))
    keep, held = validation_split(data.train_labels, 6)
    m = trained_mean(data.train_images[keep])
    resize = ResizeInputs(monkeypatch)
    result = trainer.evaluate("test")
    trainer.evaluate("val")
    test, val = torch.from_numpy(data.test_images).float(), torch.from_numpy(data.train_images[held]).float()
    expected = [test - m, test.flip(-1) - m, val - m, val.flip(-1) - m]  # image and mirror, per split
    assert len(resize.seen) == 4 and all(torch.equal(a, b) for a, b in zip(resize.seen, expected, strict=True))
    trainer.model.eval()
    with torch.no_grad():
        logits = 0.5 * (trainer.model(test - m) + trainer.model(test.flip(-1) - m))
    assert torch.equal(result.predicted, logits.argmax(1))


def test_under_paper_flips_and_shifts_act_at_uint8_and_a_black_border_becomes_minus_m():
    data = arrays(n_train=16)
    settings = RunSettings(model="paper", input_norm="paper", augment_flip=True, augment_translate=3)
    augment = Augmenter(settings, data.train_images, torch.device("cpu"))
    m = trained_mean(data.train_images)
    out = augment(torch.from_numpy(data.train_images))
    pixels = out + m  # the moved uint8 images, as floats
    assert torch.equal(pixels, pixels.round()) and pixels.min() >= 0 and pixels.max() <= 255
    as_u8 = pixels.to(torch.uint8).numpy()
    moved = 0
    for original, result in zip(data.train_images, as_u8, strict=True):
        ((flip, dy, dx),) = identify(original, result, limit=3)
        moved += (dy, dx) != (0, 0)
    assert moved > 8
    border = (as_u8 == 0).all(axis=1)  # a pixel black in every channel: shifted in (random images have none)
    assert border.any() and torch.equal(out.permute(0, 2, 3, 1)[torch.from_numpy(border)],
                                        -m.permute(1, 2, 0).expand(16, 32, 32, 3)[torch.from_numpy(border)])


def test_under_paper_the_colour_noise_is_255_times_that_of_half_added_before_the_mean_is_subtracted():
    """The same draws change the same image alike under both inputs (in pixel values), and under
    paper the input is exactly (x + 255 x noise) - m."""
    data = arrays(n_train=32)
    batch = torch.from_numpy(data.train_images)
    outs, augmenters = {}, {}
    for norm in ("half", "paper"):
        settings = RunSettings(model="paper", input_norm=norm, augment_pca_colour=0.1, seed=5)
        augmenters[norm] = Augmenter(settings, data.train_images, torch.device("cpu"))
        outs[norm] = augmenters[norm](batch)
    x, m = batch.float(), trained_mean(data.train_images)
    change_half = (outs["half"] + 1) / 2 * 255 - x
    change_paper = outs["paper"] + m - x
    assert change_half.abs().max() > 1  # the noise is there
    torch.testing.assert_close(change_paper, change_half, atol=2e-3, rtol=0)
    draws = torch.Generator().manual_seed(recipes.augmentation_seed(5))
    alphas = torch.randn(32, 3, generator=draws).mul_(0.1)
    noise = (alphas @ augmenters["paper"].pca_scale).mul_(255.0)
    assert torch.equal(outs["paper"], (x + noise[:, :, None, None]) - m)


def test_the_init_signal_page_s_script_writes_a_row_per_model_and_init(tmp_path, tiny_archive):
    """docs/cpu/paper_init_signal.py, on 2 images of the tiny archive: its table is what it says,
    and the paper's input moves the logits more than the write-up's."""
    from alexnet_cifar.data import prepare

    prepare(tiny_archive[0], tmp_path / "tiny.npz")
    spec = importlib.util.spec_from_file_location("paper_init_signal", REPO / "docs/cpu/paper_init_signal.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--data", str(tmp_path / "tiny.npz"), "--images", "2", "--out", str(tmp_path / "page.md")])
    rows = [line.split("|")[1:-1] for line in (tmp_path / "page.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[3].strip()[:1].isdigit()]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [(m, i) for m in ("paper", "paper-lrn", "torchvision")
                                                            for i in ("default", "paper")]
    assert all(float(r[3]) > float(r[2]) for r in rows)  # across images: paper's input over half's


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


# -- the paper's weight decay -----------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True])
def test_without_bias_decay_zero_gradients_leave_the_biases_and_shrink_the_weights(tiny, fused):
    """Weight decay alone (every gradient 0), after an lr change: ``bias_decay: false`` keeps each
    bias, decays each weight by lr x weight_decay; with the default every parameter decays."""
    lr, decay = 0.25, 0.1
    for bias_decay in (False, True):
        trainer = Trainer(RunSettings(model=tiny, lr=0.5, weight_decay=decay, bias_decay=bias_decay, fused_sgd=fused,
                                      device="cpu"), arrays(), torch.device("cpu"))
        trainer.set_lr(lr)
        before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        for p in trainer.model.parameters():
            p.grad = torch.zeros_like(p)
        trainer.optimizer.step()
        assert [group["lr"] for group in trainer.optimizer.param_groups] == [lr] * (1 if bias_decay else 2)
        for name, p in trainer.model.named_parameters():
            if name.endswith("bias") and not bias_decay:
                assert torch.equal(p, before[name]), name
            else:
                torch.testing.assert_close(p, before[name] * (1 - lr * decay))
                assert p.abs().sum() < before[name].abs().sum(), name


@pytest.mark.parametrize("model", ["paper", "torchvision"])
def test_without_bias_decay_the_biases_of_every_convolution_and_linear_layer_go_undecayed(model):
    net = build_model(model)
    decayed, undecayed = recipes.parameter_groups(net, RunSettings(model=model, bias_decay=False))
    names = {id(p): name for name, p in net.named_parameters()}
    assert [names[id(p)] for p in undecayed["params"]] == [n for n, _ in net.named_parameters() if n.endswith("bias")]
    assert len(undecayed["params"]) == 8 and undecayed["weight_decay"] == 0.0 and "weight_decay" not in decayed
    assert all(names[id(p)].endswith("weight") for p in decayed["params"])
    (everything,) = recipes.parameter_groups(net, RunSettings(model=model))
    assert everything["params"] == list(net.parameters())


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


def test_without_validation_images_a_batch_larger_than_the_training_set_trains_one_smaller_batch(tmp_path, tiny):
    settings = RunSettings(model=tiny, epochs=2, batch_size=64, device="cpu", eval_batch_size=8)
    history, _ = fit(settings, arrays(n_train=48, n_test=8), tmp_path, torch.device("cpu"), data_md5="md5",
                     log=lambda _: None)
    assert [r["epoch"] for r in history] == [1, 2] and all(r["diverged_at_step"] is None for r in history)
    assert all(r["train_acc"] * 48 / 100 == round(r["train_acc"] * 48 / 100) for r in history)  # of 48 images
    assert (tmp_path / "model.pt").exists()


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
