"""The model registry and the run settings."""
from __future__ import annotations

import pytest
import torch
import yaml

from alexnet_cifar.config import RESULT_KEYS, RunSettings, config_problems, resolve_run
from alexnet_cifar.models import MODELS, PoolToMultiple, build_model, count_parameters
from workflow_helpers import REPO


@pytest.mark.parametrize("name, params, size", [("paper", 58_322_314, 227), ("torchvision", 57_044_810, 224)])
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


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of: paper, torchvision"):
        build_model("vgg")


@pytest.mark.parametrize("size", [6, 12, 13])
def test_deterministic_pool_equals_adaptive_pool(size):
    x = torch.randn(2, 4, size, size)
    assert torch.allclose(PoolToMultiple((6, 6))(x), torch.nn.AdaptiveAvgPool2d((6, 6))(x), atol=1e-6)


def test_deterministic_torchvision_model_computes_the_same_function():
    torch.manual_seed(0)
    plain = build_model("torchvision").eval()
    torch.manual_seed(0)
    deterministic = build_model("torchvision", deterministic=True).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(plain(x), deterministic(x))


@pytest.mark.parametrize("name, deterministic", [("paper", False), ("torchvision", False), ("torchvision", True)])
def test_body_then_classifier_is_the_model(name, deterministic):
    """The engine's backward pass is cut between the two: together they must be the whole forward."""
    model = build_model(name, deterministic=deterministic).eval()
    x = torch.randn(2, 3, MODELS[name].input_size, MODELS[name].input_size)
    with torch.no_grad():
        features = MODELS[name].body(model, x)
        assert features.shape == (2, 9216)
        assert torch.equal(model.classifier(features), model(x))


def test_schema_models_match_the_registry():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    run_schema = schema["properties"]["runs"]["additionalProperties"]["allOf"][1]
    assert run_schema["properties"]["model"]["enum"] == list(MODELS)


def test_schema_defaults_match_the_settings_defaults():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    defaults = {k: v["default"] for k, v in schema["properties"]["train"]["allOf"][1]["properties"].items()}
    settings = RunSettings(model="paper")
    assert defaults == {k: getattr(settings, k) for k in defaults}
    assert set(defaults) | {"model"} == set(RunSettings.__dataclass_fields__)


def test_config_readme_documents_every_key_with_its_default():
    """config/README.md has a row per key, and a train key's row shows the schema's default."""
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    rows = {}
    for line in (REPO / "config/README.md").read_text().splitlines():
        if line.startswith("| `"):
            key, default = [cell.strip() for cell in line.split("|")[1:3]]
            rows[key.strip("`")] = default
    train = schema["properties"]["train"]["allOf"][1]["properties"]
    keys = [k for k in schema["properties"] if k not in ("dataset", "train")]
    keys += [f"dataset.{k}" for k in schema["properties"]["dataset"]["properties"]]
    keys += [f"train.{k}" for k in train]
    assert sorted(rows) == sorted(keys)
    for key, spec in train.items():
        assert rows[f"train.{key}"] == f"`{yaml.safe_dump(spec['default']).splitlines()[0]}`", key


def test_a_run_merges_its_overrides_over_the_train_defaults():
    config = {"train": {"epochs": 3, "lr": 0.01}, "runs": {"a": {"model": "torchvision", "lr": 0.1}}}
    settings = resolve_run(config, "a")
    assert (settings.model, settings.epochs, settings.lr, settings.batch_size) == ("torchvision", 3, 0.1, 4)
    with pytest.raises(ValueError, match="unknown run 'b'"):
        resolve_run(config, "b")


def test_only_result_settings_change_the_fingerprint():
    base = RunSettings(model="paper")
    assert set(base.result_params()) == set(RESULT_KEYS)
    assert "device" not in base.result_params()
    assert base.fingerprint("m") == RunSettings(
        model="paper", device="cpu", cuda_graph=False, fused_sgd=False, overlap_update=True).fingerprint("m")
    assert base.fingerprint("m") != RunSettings(model="paper", lr=0.01).fingerprint("m")
    assert base.fingerprint("m") != base.fingerprint("other data")


@pytest.mark.parametrize("values, message", [
    ({"model": "paper", "epochs": 0}, "epochs: must be a positive integer"),
    ({"model": "paper", "lr": -1.0}, "lr: must be a positive number"),
    ({"model": "paper", "device": "tpu"}, "device: must be auto, cpu"),
    ({"model": "paper", "lrr": 1.0}, "unknown setting(s) lrr"),
])
def test_bad_settings_are_refused(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunSettings.from_mapping(values)


def test_the_shipped_configs_are_valid():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    for name in ("config.yaml", "as-stated.yaml", "quick.yaml"):
        config = yaml.safe_load((REPO / "config" / name).read_text())
        config.setdefault("runs", {"paper": {"model": "paper"}})
        assert config_problems(config, schema) == [], name
