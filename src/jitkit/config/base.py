"""The base of every jitkit config (never imports torch).

:class:`ConfigBase` writes once what every frozen config dataclass needs: ``to_dict`` / ``from_dict``
(unknown keys are an error that lists the valid ones and suggests the closest), ``replace`` (the same
checks), coercion of values read from JSON, YAML or command-line strings to the declared field types, and
``validate`` (raises ``ConfigError`` naming what was expected and what was found).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

T = TypeVar("T", bound="ConfigBase")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A configuration value or key that jitkit cannot use."""


def suggest(name: str, valid: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, else an empty string."""
    close = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    """A field's annotation as text (``"int | None"``, ``"tuple[float, float]"``)."""
    return tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))


def coerce_value(name: str, type_name: str, v: Any) -> Any:
    """``v`` (possibly a string from the command line, or a JSON list) as the annotated type.

    Understands ``bool``, ``int``, ``float``, ``str``, ``tuple[X, ...]`` / ``tuple[X, X]`` / ``tuple`` (of
    floats) and ``X | None``; anything else is returned unchanged. A float must be finite: nan and ±inf are
    refused here, the one place every config value read from a flag, YAML or JSON passes through.
    """
    t = type_name.strip()
    if t.startswith("Optional[") and t.endswith("]"):
        t = t[len("Optional[") : -1] + " | None"
    optional = "None" in t
    base = t.replace("| None", "").replace("None |", "").strip()
    if optional and (v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", ""))):
        return None
    if base == "bool":
        if isinstance(v, str):
            low = v.strip().lower()
            if low not in _TRUE + _FALSE:
                raise ConfigError(f"{name}: expected a boolean (true/false, 1/0, on/off), found {v!r}")
            return low in _TRUE
        return bool(v)
    if base in ("int", "float"):
        what = "an integer" if base == "int" else "a finite number"
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ConfigError(f"{name}: expected {what}, found {v!r}")
        try:
            f = float(v)
        except (ValueError, OverflowError) as e:
            raise ConfigError(f"{name}: expected {what}, found {v!r}") from e
        # nan/inf from a flag, YAML (.nan, .inf) or JSON (NaN, Infinity) are refused, as are 6.5 for an int
        if not math.isfinite(f) or (base == "int" and f != int(f)):
            raise ConfigError(f"{name}: expected {what}, found {v!r}")
        return int(f) if base == "int" else f
    if base.startswith("tuple"):
        inner = base[len("tuple") :].strip("[]").replace("...", "").split(",")
        elem = next((x.strip() for x in inner if x.strip()), "float")
        items = v.replace(",", " ").split() if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name}: expected a list of {elem} values, found {v!r}")
        return tuple(coerce_value(name, elem, x) for x in items)
    return v


@dataclass(frozen=True)
class ConfigBase:
    """The base of every jitkit config: dict round trip, checked keys, typed coercion, validation."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def check_keys(cls, keys: Any) -> None:
        """Raise ``ConfigError`` for the first key that is not a field, listing the valid ones."""
        valid = cls.field_names()
        for k in keys:
            if k not in valid:
                raise ConfigError(
                    f"unknown {cls.__name__} key {k!r}{suggest(k, valid)}; valid keys: {', '.join(valid)}"
                )

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any], *, strict: bool = True) -> T:
        """Build from a dict (e.g. read from JSON); unknown keys are an error, or dropped with strict=False."""
        if strict:
            cls.check_keys(d)
        valid = set(cls.field_names())
        obj = cls(**{k: v for k, v in d.items() if k in valid})._coerce()
        obj.validate()
        return obj

    def _coerce(self: T) -> T:
        """Cast values read from JSON / YAML / command-line strings to the declared field types."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            c = coerce_value(f.name, _type_name(f.type), v)
            if c is not v:
                changes[f.name] = c
        return replace(self, **changes) if changes else self

    def replace(self: T, **kw: Any) -> T:
        """A copy with fields changed (values coerced, keys and the result checked)."""
        self.check_keys(kw)
        obj = replace(self, **kw)._coerce()
        obj.validate()
        return obj

    def validate(self) -> None:
        """Raise ``ConfigError`` for values that cannot work (overridden by each config)."""

    def check_at_least(self, minimum: float, *names: str) -> None:
        """Raise ``ConfigError`` naming the first of ``names`` whose value is below ``minimum``."""
        for name in names:
            v = getattr(self, name)
            if v is not None and v < minimum:
                raise ConfigError(f"{name} must be >= {minimum}, found {v}")


def diff_table(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    """Two flat dicts as aligned columns; differing rows are marked ``<-- differs``."""
    keys = list(dict.fromkeys(list(a) + list(b)))
    w = max(14, len(name_a), len(name_b), *(len(str(a.get(k, "-"))) for k in keys))
    rows = [f"  {'field':<18} {name_a:>{w}}   {name_b:>{w}}"]
    for k in keys:
        va, vb = str(a.get(k, "-")), str(b.get(k, "-"))
        rows.append(f"  {k:<18} {va:>{w}}   {vb:>{w}}" + ("   <-- differs" if va != vb else ""))
    return "\n".join(rows)
