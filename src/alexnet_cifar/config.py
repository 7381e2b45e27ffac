"""A run's settings: what defines its result, what only says how it is executed.

The workflow's config (``train:`` defaults merged with one entry of ``runs:``) and the command line
both end up in one :class:`RunSettings`. Only the result-defining part goes into the Snakemake
rule's ``params`` and into the checkpoint fingerprint, so moving a run to another device or turning
CUDA graphs off never retrains anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

#: Settings that change the numbers a run produces.
RESULT_KEYS = (
    "model", "epochs", "batch_size", "lr", "momentum", "weight_decay", "seed", "num_classes",
    "deterministic", "bf16", "channels_last",
)
#: Settings that only change how (where, how fast) the same run is computed.
EXECUTION_KEYS = ("device", "cuda_graph", "fused_sgd", "overlap_update", "eval_batch_size")


@dataclass(frozen=True)
class RunSettings:
    model: str
    epochs: int = 50
    batch_size: int = 4
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    num_classes: int = 10
    deterministic: bool = False
    bf16: bool = False
    channels_last: bool = False
    device: str = "auto"
    cuda_graph: bool = True
    fused_sgd: bool = True
    overlap_update: bool = False
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        from .models import MODELS  # imported here so the workflow can read configs without torch

        if self.model not in MODELS:
            raise ValueError(f"model: unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        for key in ("epochs", "batch_size", "num_classes", "eval_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be a positive number, got {self.lr!r}")
        for key in ("momentum", "weight_decay"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key}: must be zero or positive, got {getattr(self, key)!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "RunSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def result_params(self) -> dict[str, Any]:
        """The settings that define the result: the training rule's params."""
        return {key: getattr(self, key) for key in RESULT_KEYS}

    def fingerprint(self, data_md5: str) -> str:
        """Identifies the result this run will produce: its result settings plus its data."""
        blob = json.dumps({"settings": self.result_params(), "data_md5": data_md5}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def resolve_run(config: Mapping[str, Any], run: str) -> RunSettings:
    """Merge the workflow config's ``train:`` defaults with the overrides of ``runs[run]``."""
    runs = config.get("runs") or {}
    if run not in runs:
        raise ValueError(f"unknown run {run!r}; the config defines: {', '.join(runs) or 'none'}")
    return RunSettings.from_mapping({**(config.get("train") or {}), **runs[run]})


def _allowed_keys(schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    """Property names a (sub)schema admits, following ``allOf`` and local ``$ref``."""
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    keys = list(schema.get("properties", {}))
    for sub in schema.get("allOf", []):
        keys += [k for k in _allowed_keys(sub, root) if k not in keys]
    return keys


def config_problems(config: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Every way ``config`` breaks ``schema``, each naming the key and what is allowed.

    jsonschema finds the errors; this only words them for people (its own messages quote the whole
    schema, which hides the one key that is wrong).
    """
    import jsonschema

    problems = []
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(map(str, error.absolute_path)) or "(top level)"
        if error.validator in ("additionalProperties", "unevaluatedProperties"):
            allowed = _allowed_keys(error.schema, schema)
            unknown = sorted(set(error.instance) - set(allowed))
            if not unknown:  # a side effect of another error inside this object, reported itself
                continue
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(allowed)}")
        elif error.validator == "enum":
            problems.append(f"{where}: {error.instance!r} is not allowed; allowed values: "
                            f"{', '.join(map(str, error.validator_value))}")
        else:
            problems.append(f"{where}: {error.message}")
    return problems


def check_config(config: Mapping[str, Any], schema_path: str) -> None:
    """Raise a ValueError listing every problem of ``config`` (see :func:`config_problems`)."""
    import yaml

    with open(schema_path) as handle:
        schema = yaml.safe_load(handle)
    problems = config_problems(config, schema)
    if problems:
        raise ValueError("invalid configuration (see config/README.md):\n  " + "\n  ".join(problems))
