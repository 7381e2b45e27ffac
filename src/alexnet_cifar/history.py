"""``history.jsonl``, the record of a run: one JSON object per epoch, the one place that reads,
checks and writes it.

Everything after training (the CSV, the facts, the figures, the summary) is derived from this file,
so a damaged or hand-edited history is refused with the line and field named, never summarised.
A record has exactly :data:`FIELDS`. A loss that went non-finite is written as ``null`` (JSON has
no NaN), which only the epoch that diverged may hold, and that epoch is the last one. The
validation accuracy and loss are ``null`` in every record of a run without validation images;
histories written before validation existed lack the two fields and are read with them ``null``.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from .atomic import write_text
from .errors import UserError


class HistoryError(UserError, ValueError):
    """A history that is missing, unreadable or breaks its rules; the message names the file, line and field."""


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


#: field: (its test, what it should be), in the order the training writes them
_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "epoch": (_count, "an integer >= 1"),
    "train_loss": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "train_acc": (lambda v: _number(v) and 0 <= v <= 100, "a number in [0, 100] (percent)"),
    "test_loss": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "test_acc": (lambda v: _number(v) and 0 <= v <= 100, "a number in [0, 100] (percent)"),
    "val_loss": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "val_acc": (lambda v: _number(v) and 0 <= v <= 100, "a number in [0, 100] (percent)"),
    "lr": (lambda v: _number(v) and v > 0, "a number > 0"),
    "seconds": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "diverged_at_step": (lambda v: v is None or _count(v), "null or an integer >= 1"),
}
FIELDS = tuple(_RULES)
#: fields that histories written before validation existed do not have: read as null
_ADDED_LATER = ("val_loss", "val_acc")
_FIX = "the training writes this file: restore it, or delete it and rerun the training"


def validate_history(records: list[dict], source: str) -> list[dict]:
    """Return ``records`` if they are a valid history, else raise :class:`HistoryError`.

    ``source`` names the file in messages; record N is line N of it.
    """
    def fail(line: int, problem: str) -> HistoryError:
        return HistoryError(f"{source}, line {line}: {problem}; {_FIX}")

    if not records:
        raise HistoryError(f"{source} holds no epoch: a history has one record per completed epoch; {_FIX}")
    validated = isinstance(records[0], dict) and records[0].get("val_acc") is not None  # as line 1 says
    for line, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise fail(line, f"expected a JSON object with {', '.join(FIELDS)}, found {_show(record)}")
        if not any(f in record for f in _ADDED_LATER):  # written before validation existed
            record.update(dict.fromkeys(_ADDED_LATER))
        missing = [f for f in FIELDS if f not in record]
        if missing:
            raise fail(line, f"missing field(s) {', '.join(missing)}")
        unknown = [k for k in record if k not in _RULES]
        if unknown:
            raise fail(line, f"unknown field(s) {', '.join(map(str, unknown))}; "
                             f"a record has exactly {', '.join(FIELDS)}")
        diverged = record["diverged_at_step"] is not None
        # where a field may be null: a loss that went non-finite in the epoch that diverged; the
        # validation fields in a run without validation (whose first line has no val_acc)
        may_be_null = {"train_loss": (diverged, "in the epoch that diverged"),
                       "test_loss": (diverged, "in the epoch that diverged"),
                       "val_loss": (diverged or not validated, "without validation or in the epoch that diverged"),
                       "val_acc": (not validated, "in a run without validation: line 1 has one")}
        for field, (ok, expected) in _RULES.items():
            value = record[field]
            null_ok, when = may_be_null.get(field, (False, ""))
            if value is None and null_ok:
                continue
            if not ok(value):
                raise fail(line, f"{field} should be {expected}{f' (null only {when})' if when else ''}, "
                                 f"found {_show(value)}")
        if not validated and (record["val_acc"], record["val_loss"]) != (None, None):
            raise fail(line, "val_acc and val_loss should be null, as line 1 has no val_acc: a run has a "
                             "validation accuracy in every epoch or in none")
        if record["epoch"] != line:
            raise fail(line, f"epoch should be {line} (epochs run 1, 2, 3, ... without gaps or repeats), "
                             f"found {record['epoch']}")
        if diverged and line != len(records):
            raise fail(line, f"training diverged here (diverged_at_step {record['diverged_at_step']}) and stops "
                             f"at that epoch, yet {len(records) - line} more record(s) follow")
    return records


def read_history(path: str | os.PathLike) -> list[dict]:
    """The records of a ``history.jsonl``, parsed strictly (one JSON object per line; no NaN or
    Infinity) and checked by :func:`validate_history`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{path} does not exist: run the training first") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HistoryError(f"cannot read {path} as UTF-8 text ({e}); {_FIX}") from e
    records = []
    for line, content in enumerate(text.splitlines(), 1):
        try:
            records.append(json.loads(content, parse_constant=_refuse_constant))
        except json.JSONDecodeError as e:
            raise HistoryError(f"{path}, line {line}: not JSON ({e.msg} at column {e.colno}); {_FIX}") from None
        except ValueError as e:
            raise HistoryError(f"{path}, line {line}: {e}; {_FIX}") from None
    return validate_history(records, str(path))


def write_history(path: str | os.PathLike, records: list[dict]) -> None:
    """Check ``records`` and write them to ``path`` atomically, one JSON object per line."""
    validate_history(records, str(path))
    write_text(path, "".join(json.dumps({f: r[f] for f in FIELDS}, allow_nan=False) + "\n" for r in records))


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows (a loss that went non-finite is written as null)")


def _show(value: object) -> str:
    """``value`` as it would appear in the file."""
    return json.dumps(value, default=repr)
