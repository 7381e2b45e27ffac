"""The workflow's config and a run's settings, derived from one contract: the JSON schema.

``config.schema.yaml``, shipped inside this package (``workflow/schemas/config.schema.yaml``, where
Snakemake users look for it, links to it), holds every key's type, allowed range, default and
description, and marks which train settings define a run's result (``defines_result``). This
module reads it (and nothing heavier than YAML: building the workflow's job graph must not import
torch) to

- fill a run's settings (:class:`RunSettings`) with the schema's defaults;
- expand the config's ``runs``, ``seeds`` and ``sweep`` into one run per training (:func:`expand_runs`);
- word every problem of a config for people, naming the key (:func:`config_problems`).

Only the result-defining settings go into the training rule's ``params`` and into the checkpoint
fingerprint, so moving a run to another device or turning CUDA graphs off retrains nothing; a
setting marked ``omitted_at_default`` goes in only where it differs from its default, so adding
it retrains no finished run.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import itertools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

from . import stand_in
from .errors import UserError
from .layout import workflow_paths

#: The schema, as package data: the package works installed anywhere, not only from this checkout.
SCHEMA = importlib.resources.files(__package__) / "config.schema.yaml"


class SettingsError(UserError, ValueError):
    """A run's settings or the workflow's config break a rule; the message names the key."""


def schema() -> dict[str, Any]:
    """The schema, with the test suite's stand-in model among the models while its switch is on."""
    return _schema(stand_in.enabled())


@functools.cache
def _schema(with_stand_in: bool) -> dict[str, Any]:
    import yaml

    loaded = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    if with_stand_in:
        loaded["definitions"]["run"]["allOf"][1]["properties"]["model"]["enum"].append(stand_in.NAME)
    return loaded


def schema_file() -> str:
    """The path that the Snakefile's ``validate`` reads: the shipped schema, or, while the test
    suite's stand-in is switched on, a copy of it that lists the stand-in among the models
    (``snakemake.utils.validate`` takes a file, not a dict), written once per schema content."""
    if not stand_in.enabled():
        return str(SCHEMA)
    import tempfile

    text = json.dumps(schema(), sort_keys=True)
    path = Path(tempfile.gettempdir()) / f"alexnet-cifar-schema-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.exists():
        from .atomic import write_text

        write_text(path, text)
    return str(path)


@functools.cache
def train_schema() -> dict[str, dict]:
    """Each train setting's schema (type, range, default, description), by name, in schema order.
    The defaults sit under ``train`` only: Snakemake's ``validate`` fills a default wherever the
    schema gives one, and in a run entry it would override what ``train`` says."""
    defaults = schema()["properties"]["train"]["allOf"][1]["properties"]
    return {key: {**spec, **defaults.get(key, {})}
            for key, spec in schema()["definitions"]["train_settings"]["properties"].items()}


def model_names() -> list[str]:
    return schema()["definitions"]["run"]["allOf"][1]["properties"]["model"]["enum"]


def result_keys() -> list[str]:
    """Settings that change the numbers a run produces (the rest say where and how fast)."""
    return ["model", *(k for k, spec in train_schema().items() if spec["defines_result"])]


def omitted_at_default() -> list[str]:
    """Result-defining settings added after runs had finished without them (``omitted_at_default``
    in the schema): at their default they give the numbers of the code before them, so there they
    stay out of the params and the fingerprint, and those runs are not trained again."""
    return [k for k, spec in train_schema().items() if spec.get("omitted_at_default")]


#: The train settings' defaults, as the schema gives them.
DEFAULTS = {key: spec["default"] for key, spec in train_schema().items()}


@dataclass(frozen=True)
class RunSettings:
    """One training's settings. Ranges and meanings: the schema's train settings, whose defaults
    these are (:func:`settings_problems` checks values against it)."""

    model: str
    epochs: int = DEFAULTS["epochs"]
    batch_size: int = DEFAULTS["batch_size"]
    lr: float = DEFAULTS["lr"]
    momentum: float = DEFAULTS["momentum"]
    weight_decay: float = DEFAULTS["weight_decay"]
    seed: int = DEFAULTS["seed"]
    num_classes: int = DEFAULTS["num_classes"]
    deterministic: bool = DEFAULTS["deterministic"]
    bf16: bool = DEFAULTS["bf16"]
    channels_last: bool = DEFAULTS["channels_last"]
    # training recipes (alexnet_cifar.recipes); the defaults are the reported protocol
    augment_flip: bool = DEFAULTS["augment_flip"]
    augment_translate: int = DEFAULTS["augment_translate"]
    augment_pca_colour: float = DEFAULTS["augment_pca_colour"]
    lr_schedule: str = DEFAULTS["lr_schedule"]
    lr_milestones: tuple[int, ...] | None = DEFAULTS["lr_milestones"]
    lr_gamma: float | None = DEFAULTS["lr_gamma"]
    lr_patience: int | None = DEFAULTS["lr_patience"]
    lr_max_drops: int | None = DEFAULTS["lr_max_drops"]
    warmup_epochs: int | None = DEFAULTS["warmup_epochs"]
    nesterov: bool = DEFAULTS["nesterov"]
    label_smoothing: float = DEFAULTS["label_smoothing"]
    init: str = DEFAULTS["init"]
    validation_images: int = DEFAULTS["validation_images"]
    tta_flip: bool = DEFAULTS["tta_flip"]
    input_norm: str = DEFAULTS["input_norm"]
    bias_decay: bool = DEFAULTS["bias_decay"]
    device: str = DEFAULTS["device"]
    cuda_graph: bool = DEFAULTS["cuda_graph"]
    fused_sgd: bool = DEFAULTS["fused_sgd"]
    eval_batch_size: int = DEFAULTS["eval_batch_size"]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunSettings:
        """The settings in ``values`` (a run's merged config entry), the defaults for the rest."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        if "model" not in values:
            raise SettingsError(f"model: missing; choose one of: {', '.join(model_names())}")
        values = dict(values)
        if isinstance(values.get("lr_milestones"), list):  # frozen settings hold no list
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values)

    def result_params(self) -> dict[str, Any]:
        """The settings that define the result: the training rule's params (plain JSON values), in
        the schema's order, less each :func:`omitted_at_default` setting that sits at its default."""
        omitted = {key for key in omitted_at_default() if getattr(self, key) == DEFAULTS[key]}
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in ((key, getattr(self, key)) for key in result_keys() if key not in omitted)}

    def fingerprint(self, data_md5: str) -> str:
        """Identifies the result this run will produce: its result settings plus its data."""
        blob = json.dumps({"settings": self.result_params(), "data_md5": data_md5}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def settings_problems(values: Mapping[str, Any]) -> list[str]:
    """Every way one run's settings break the schema or the rules between settings that it cannot
    express (:func:`recipe_problems`), each naming the key (for the command line)."""
    run_schema = {**schema()["definitions"]["run"], "definitions": schema()["definitions"]}
    problems = _schema_problems(dict(values), run_schema)
    return problems or recipe_problems(RunSettings.from_mapping(values))


#: Each learning-rate schedule's parameters (alexnet_cifar.recipes gives their defaults).
SCHEDULE_PARAMETERS = {"constant": (), "step": ("lr_milestones", "lr_gamma"),
                       "plateau": ("lr_patience", "lr_max_drops"), "cosine": ("warmup_epochs",)}


def recipe_problems(s: RunSettings) -> list[str]:
    """The rules between a run's settings that the schema cannot express, as "key: problem"."""
    problems = []
    for schedule, keys in SCHEDULE_PARAMETERS.items():
        for key in keys:
            if getattr(s, key) is not None and schedule != s.lr_schedule:
                problems.append(f"{key}: set ({_plain(getattr(s, key))}) for lr_schedule {s.lr_schedule}, but it is a "
                                f"parameter of lr_schedule {schedule}; remove it, or set lr_schedule: {schedule}")
    if s.lr_schedule == "plateau" and s.validation_images == 0:
        problems.append("lr_schedule: plateau lowers the lr when the validation accuracy stalls, but "
                        "validation_images is 0; set validation_images (e.g. 5000)")
    milestones = list(s.lr_milestones or [])
    if any(b <= a for a, b in itertools.pairwise(milestones)):
        problems.append(f"lr_milestones: {milestones} must increase (each epoch once, in order)")
    if any(m > s.epochs for m in milestones):
        problems.append(f"lr_milestones: {max(milestones)} is beyond epochs ({s.epochs}); every milestone "
                        f"must be at most epochs")
    if s.warmup_epochs is not None and s.warmup_epochs >= s.epochs:
        problems.append(f"warmup_epochs: {s.warmup_epochs} leaves no epoch of the cosine decay in {s.epochs} "
                        f"epochs; use fewer than epochs")
    if s.nesterov and s.momentum == 0:
        problems.append("nesterov: Nesterov momentum needs momentum > 0 (momentum is 0)")
    return problems


def _plain(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


# -- the workflow's config --------------------------------------------------------------------

def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` key by key, as Snakemake merges ``--configfile`` files."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(*paths: str | os.PathLike) -> dict[str, Any]:
    """The YAML files merged in order (``config/config.yaml`` first), as the workflow sees them,
    numbers written as text read as numbers (:func:`numbers_from_text`)."""
    import yaml

    config: dict[str, Any] = {}
    for path in paths:
        with open(path) as handle:
            config = merge(config, yaml.safe_load(handle) or {})
    return numbers_from_text(config)


# A plain decimal or scientific number: 0.001, 1e-3, 5E-4, +2.5e+1, .5 (not nan, inf, 0x10 or 1_000).
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value) else value


def numbers_from_text(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with each number-typed train setting that is written as a plain decimal or
    scientific number in text turned into that number, in ``train``, in every run entry and in
    ``sweep`` lists. Anything else is left for the schema to refuse, naming the key and the value.

    YAML 1.1, which PyYAML and so Snakemake read, takes ``1e-3`` and ``5e-4`` for text (a float
    needs a dot there: ``1.0e-3``), while ML configs write learning rates that way. Converted once,
    before validation, so run names, params and fingerprints see the number.
    """
    numeric = {key for key, spec in train_schema().items() if "number" in types_of(spec)}

    def entry_numbers(entry: Any) -> Any:
        if not isinstance(entry, Mapping):
            return entry
        return {key: _number(value) if key in numeric else value for key, value in entry.items()}

    converted = dict(config)
    if "train" in converted:
        converted["train"] = entry_numbers(converted["train"])
    if isinstance(converted.get("runs"), Mapping):
        converted["runs"] = {name: entry_numbers(entry) for name, entry in converted["runs"].items()}
    if isinstance(converted.get("sweep"), Mapping):
        converted["sweep"] = {key: [_number(v) for v in values] if key in numeric and isinstance(values, list)
                              else values for key, values in converted["sweep"].items()}
    return converted


def types_of(spec: Mapping[str, Any]) -> list[str]:
    """The JSON types a setting's schema allows, as a list ("null" included where it may be unset)."""
    kind = spec.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the schema's top-level defaults for the keys it leaves out (the train
    settings' defaults come with :class:`RunSettings`); what Snakemake's ``validate`` also does."""
    defaults = {key: spec["default"] for key, spec in schema()["properties"].items() if "default" in spec}
    return {**defaults, **config}


@dataclass(frozen=True)
class Run:
    """One training of the expanded config. Its *setting* is the set of runs that differ only in
    their seed, named as the run without ``-seed{N}``; a run without ``seeds`` is its own setting."""

    name: str
    setting: str
    swept: dict[str, Any]  # the sweep's values for this run, in the sweep's order
    values: dict[str, Any]  # its settings as the config gives them (train, run entry, sweep, seed)

    @functools.cached_property  # the rules' params functions ask for it several times a job
    def settings(self) -> RunSettings:
        """The run's settings, checked (frozen: one object serves every caller)."""
        return RunSettings.from_mapping(self.values)

    def table_row(self) -> dict[str, Any]:
        """What the summary and the replicate statistics need to know of the run."""
        settings = self.settings
        return {"setting": self.setting, "seed": settings.seed, "model": settings.model, "swept": self.swept}


def _seed_list(seeds: int | list[int]) -> list[int]:
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def value_label(value: Any) -> str:
    """A value as run names, tables and figures write it: 0.001 (not 0.0010000), true, 30,60."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(value_label, value))
    return value if isinstance(value, str) else format(value, "g")


def differences_from_protocol(settings: RunSettings, *, leave_out: tuple[str, ...] = ()) -> list[str]:
    """The result-defining settings in which a run differs from the write-up's protocol (the
    schema's defaults), in the schema's order: ``batch_size 128``, ``augment_flip``,
    ``lr_schedule plateau``. The model and the seed are not part of the protocol; ``leave_out``
    names settings the caller shows itself."""
    differences = []
    for key in result_keys():
        value = getattr(settings, key)
        default = DEFAULTS.get(key)
        if key in ("model", "seed", *leave_out) or value == default or value is None:
            continue
        differences.append(key if value is True else f"{key} {value_label(value)}")
    return differences


def expand_runs(config: Mapping[str, Any]) -> dict[str, Run]:
    """Every run entry crossed with every combination of the ``sweep`` values and with its seeds:
    ``{name}[-{key}{value:g}]...[-seed{N}]``. Assumes a checked config (:func:`config_problems`)."""
    train = dict(config.get("train") or {})
    default_seeds = train.pop("seeds", None)
    sweep = dict(config.get("sweep") or {})
    runs: dict[str, Run] = {}
    for entry_name, entry in (config.get("runs") or {}).items():
        entry = dict(entry)
        # a run's own seed opts it out of the train: default seeds; seeds: in the entry opts in
        seeds = entry.pop("seeds", None if "seed" in entry else default_seeds)
        for combo in itertools.product(*sweep.values()):
            swept = dict(zip(sweep, combo, strict=True))
            setting = entry_name + "".join(f"-{key}{value_label(value)}" for key, value in swept.items())
            values = {**train, **entry, **swept}
            if seeds is None:
                runs[setting] = Run(setting, setting, swept, values)
                continue
            for seed in _seed_list(seeds):
                name = f"{setting}-seed{seed}"
                runs[name] = Run(name, setting, swept, {**values, "seed": seed})
    return runs


def run_wildcard_pattern() -> str:
    """The constraint of the workflow's run wildcard: one path segment, but not a stem of the
    workflow's own files followed by its one extension (``metrics/summary.csv`` is the summary's,
    never run ``summary``'s metrics; :func:`reserved_run_names` refuses such runs).

    It does not list the config's run names: Snakemake copies the constraint into every output
    pattern and rescans it each time it fills in a file name, and a list of 1,600 names made a
    sweep's plan several times slower. A target naming no run of the config stops where the rules
    look its settings up (``run_settings`` in workflow/rules/common.smk), naming the run.
    """
    reserved = "|".join(re.escape(name) for name in reserved_run_names())
    return rf"(?!(?:{reserved})\.[^/.]+$)[^/]+"


def resolve_run(config: Mapping[str, Any], run: str) -> RunSettings:
    """The settings of one run of the expanded config."""
    runs = expand_runs(config)
    if run not in runs:
        raise SettingsError(f"unknown run {run!r}; the config defines: {', '.join(runs) or 'none'}")
    return runs[run].settings


def reserved_run_names() -> list[str]:
    """The stems of the workflow's own files (:data:`alexnet_cifar.layout.WORKFLOW_FILES`), which no
    run may be named: they share the folders of every run's files ({outdir}/metrics/{run}.csv and
    .facts.json, {outdir}/figures/{run}.png and .svg), and two rules would claim one file."""
    return sorted({PurePosixPath(path).stem for path in workflow_paths()})


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """Every way ``config`` breaks the schema or the rules it cannot express, each naming the key."""
    problems = _schema_problems(config, schema())
    if problems:
        return problems
    problems += _sweep_problems(config.get("sweep") or {})
    for where, entry in [("train", config.get("train") or {}),
                         *((f"runs.{name}", entry) for name, entry in config["runs"].items())]:
        if "seed" in entry and "seeds" in entry:
            problems.append(f"{where}: has both seed and seeds; give seeds (a list, or a count N for "
                            f"0..N-1) to replicate, or one seed")
    if problems:
        return problems
    names: dict[str, str] = {}
    reserved = reserved_run_names()
    for entry_name in config["runs"]:
        for run, expanded in expand_runs({**config, "runs": {entry_name: config["runs"][entry_name]}}).items():
            problems += [f"runs.{entry_name}.{problem}" for problem in recipe_problems(expanded.settings)
                         if f"runs.{entry_name}.{problem}" not in problems]
            if run in names:
                problems.append(f"runs.{entry_name}: expands to run {run!r}, as runs.{names[run]} does; "
                                f"rename one of them")
            if run in reserved:
                files = [path for path in workflow_paths() if PurePosixPath(path).stem == run]
                problems.append(f"runs.{entry_name}: its run {run!r} would be named like the workflow's own "
                                f"{' and '.join(files)}; rename the run entry (reserved run names: "
                                f"{', '.join(reserved)})")
            names[run] = entry_name
    return problems


def sweepable_keys() -> list[str]:
    """Result-defining settings a sweep may list values of: the numbers and true/false ones."""
    kinds = {"boolean", "integer", "number"}
    return [key for key in result_keys() if key not in ("model", "seed")
            and set(types_of(train_schema()[key])) - {"null"} <= kinds and types_of(train_schema()[key])]


def _sweep_problems(sweep: Mapping[str, Any]) -> list[str]:
    sweepable = sweepable_keys()
    problems = []
    for key, values in sweep.items():
        if key == "seed":
            problems.append("sweep.seed: seeds are not swept; give seeds: (a list, or a count N for 0..N-1) "
                            "under train: or in a run entry")
        elif key == "model":
            problems.append("sweep.model: a run entry names its model; give one entry per model under runs:")
        elif key not in train_schema():
            problems.append(f"sweep.{key}: unknown setting; sweepable: {', '.join(sweepable)}")
        elif not train_schema()[key]["defines_result"]:
            problems.append(f"sweep.{key}: does not define a result (it says where or how fast a run is "
                            f"computed), so sweeping it would retrain the same run; sweepable: {', '.join(sweepable)}")
        elif key not in sweepable:
            problems.append(f"sweep.{key}: only numbers and true/false are swept; give one run entry per "
                            f"{key} instead")
        else:
            spec = train_schema()[key]
            for value in values:
                problems += [f"sweep.{key}: {problem.split(': ', 1)[1]}"
                             for problem in _schema_problems(value, spec)]
    return problems


def _allowed_keys(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    """Property names a (sub)schema admits, following ``allOf`` and local ``$ref``."""
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    keys = list(node.get("properties", {}))
    for sub in node.get("allOf", []):
        keys += [k for k in _allowed_keys(sub, root) if k not in keys]
    return keys


def _schema_problems(instance: Any, node: Mapping[str, Any]) -> list[str]:
    """jsonschema finds the errors; this words them for people (its own messages quote the whole
    schema, which hides the one key that is wrong)."""
    import jsonschema

    problems = []
    validator = jsonschema.Draft202012Validator({**node, "definitions": schema()["definitions"]})
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(map(str, error.absolute_path)) or "(top level)"
        if error.validator in ("additionalProperties", "unevaluatedProperties"):
            allowed = _allowed_keys(error.schema, schema())
            unknown = sorted(set(error.instance) - set(allowed))
            if not unknown:  # a side effect of another error inside this object, reported itself
                continue
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(allowed)}")
        elif error.validator == "enum":
            problems.append(f"{where}: {error.instance!r} is not allowed; allowed values: "
                            f"{', '.join(map(str, error.validator_value))}")
        elif error.validator == "oneOf" and "description" in error.schema:  # say what the forms are
            problems.append(f"{where}: {error.instance!r} is not allowed: {error.schema['description']}")
        else:
            problems.append(f"{where}: {error.message}")
    return list(dict.fromkeys(problems))  # allOf can report one error twice


def check_config(config: Mapping[str, Any]) -> None:
    """Raise a SettingsError listing every problem of ``config`` (see :func:`config_problems`)."""
    problems = config_problems(config)
    if problems:
        raise SettingsError("invalid configuration (see config/README.md):\n  " + "\n  ".join(problems))
