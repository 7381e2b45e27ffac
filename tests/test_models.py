"""The model registry: the published layers, sizes and the deterministic variant."""
from __future__ import annotations

import pytest
import torch

from alexnet_cifar.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize("name, params, size", [("paper", 58_322_314, 227), ("paper-lrn", 58_322_314, 227),
                                                ("torchvision", 57_044_810, 224)])
def test_models_have_the_published_size_and_output(name, params, size):
    model = build_model(name, num_classes=10).eval()
    assert count_parameters(model) == params
    assert MODELS[name].input_size == size
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 10)


def test_paper_layers_are_the_published_ones():
    convs = [m for m in build_model("paper").features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (3, 96, 11, 4, 0), (96, 256, 5, 1, 2), (256, 384, 3, 1, 1), (384, 384, 3, 1, 1), (384, 256, 3, 1, 1)]


def test_paper_refuses_another_input_size_naming_the_one_it_needs():
    with pytest.raises(ValueError, match="needs 227x227 inputs, got 224x224"):
        build_model("paper")(torch.zeros(1, 3, 224, 224))


def test_paper_lrn_normalises_after_the_first_two_relus_as_the_paper_does():
    """conv, ReLU, LRN, max-pool for conv1 and conv2; alpha 1e-4 over 5 channels is PyTorch's 5e-4."""
    layers = list(build_model("paper-lrn").features)
    kinds = [type(m).__name__ for m in layers]
    assert kinds[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
                         "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"]
    assert kinds.count("LocalResponseNorm") == 2
    lrn = layers[2]
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 5e-4, 0.75, 2.0)
    x = torch.rand(1, 96, 5, 5) + 1
    by_hand = x / (2.0 + 1e-4 * torch.nn.functional.avg_pool3d(  # k + alpha * (sum over 5 channels of x^2)
        (x * x).unsqueeze(1), (5, 1, 1), stride=1, padding=(2, 0, 0), count_include_pad=True).squeeze(1) * 5) ** 0.75
    assert torch.allclose(lrn(x), by_hand, atol=1e-6)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of: paper, paper-lrn, torchvision"):
        build_model("vgg")


def test_deterministic_torchvision_model_computes_the_same_function():
    torch.manual_seed(0)
    plain = build_model("torchvision").eval()
    torch.manual_seed(0)
    deterministic = build_model("torchvision", deterministic=True).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(plain(x), deterministic(x))




def test_a_run_s_record_names_torchvision_s_own_version_without_importing_it(monkeypatch):
    """run.json's versions: torchvision's ``__version__`` with its build (``+cu130``), read from its
    version.py when the run's model did not import torchvision."""
    import sys

    import torchvision

    from alexnet_cifar import provenance

    monkeypatch.delitem(sys.modules, "torchvision")
    assert provenance.torchvision_version() == torchvision.__version__
    assert "torchvision" not in sys.modules
