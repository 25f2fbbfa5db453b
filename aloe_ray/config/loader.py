"""Load a job config: class defaults, then `--config file.yaml`, then `--key.sub=value` flags.

A config class may declare `EMBEDDED_DEFAULT: ClassVar[dict]`: settings that apply only when no
`--config` file is given (the laptop quick run, e.g. a few short trees), while the class defaults
stay the method's values that a config file builds on. Flags override both.

It may also declare `PRESETS: ClassVar[dict[str, dict]]`: named bundles of settings that
`--preset NAME` applies on top of the defaults (instead of the embedded default), before the
config file and the flags. Every job has the `reference` preset: the reference implementation's choices,
for numbers comparable to the paper (docs/method.md lists them and what cannot be reproduced).

Errors name the offending key and what is allowed, before anything heavy starts.
"""

from __future__ import annotations

import copy
import difflib
import sys
import types
import typing
from collections.abc import Sequence
from enum import Enum
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key and why."""


def load_config(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None) -> T:
    """Build `cls` from argv (`--config FILE`, `--a.b=v` / `--a.b v`, `--help`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(config_help(cls, prog=prog))
        raise SystemExit(0)
    config_file, preset, overrides = _split_args(argv)
    # Start from the defaults as the parent models set them, so that overriding one field of a
    # sub-config (say a role's temperature) keeps that sub-config's other non-generic defaults.
    data: dict[str, Any] = cls().model_dump(mode="json")
    if not config_file and preset is None:  # a preset is a whole setting: no laptop shortcuts under it
        _merge(data, copy.deepcopy(embedded_default(cls)))
    if preset is not None:
        _merge(data, copy.deepcopy(preset_settings(cls, preset)))
    if config_file:
        _merge(data, _read_yaml(config_file))
    for key, raw in overrides:
        # A text field takes the flag as typed: --run_id=20240101 stays '20240101', not an int.
        text = _is_text_field(cls, key) and raw not in ("null", "~")
        _set_path(data, key, raw if text else _parse_value(raw))
    return validate_config(cls, data, source=config_file)


def embedded_default(cls: type[BaseModel]) -> dict[str, Any]:
    """What `cls` sets on top of its defaults when run without a config file."""
    return getattr(cls, "EMBEDDED_DEFAULT", None) or {}


def presets(cls: type[BaseModel]) -> dict[str, dict[str, Any]]:
    return getattr(cls, "PRESETS", None) or {}


def preset_settings(cls: type[BaseModel], name: str) -> dict[str, Any]:
    """The settings `--preset NAME` applies; a name `cls` does not have is an error."""
    known = presets(cls)
    if name not in known:
        hint = difflib.get_close_matches(name, list(known), n=1)
        raise ConfigError(f"unknown preset '{name}'" + (f"; did you mean '{hint[0]}'?" if hint else "")
                          + f" presets of this job: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def _flat(data: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.extend(_flat(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def validate_config(cls: type[T], data: dict[str, Any], *, source: str | None = None) -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(cls, err) for err in exc.errors()]
        where = f" (from {source} and flags)" if source else ""
        raise ConfigError(f"invalid {cls.__name__}{where}:\n  " + "\n  ".join(lines)) from None


def save_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, as saved next to every output."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _split_args(argv: list[str]) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    config_file = preset = None
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument '{arg}': use --config FILE or --key.sub=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"flag --{key} needs a value (--{key}=VALUE)")
            value = argv[i + 1]
            i += 1
        if key == "config":
            config_file = value
        elif key == "preset":
            preset = value
        else:
            overrides.append((key.replace("-", "_"), value))
        i += 1
    return config_file, preset, overrides


def _read_yaml(path: str) -> dict[str, Any]:
    from aloe_ray.storage import read_text  # the ground floor: storage imports nothing above it

    try:
        text = read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, not {type(data).__name__}")
    return data


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _describe(cls: type[BaseModel], err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = sorted(_fields_at(cls, loc[:-1]))
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"unknown key '{key}'{did_you_mean} allowed here: {', '.join(allowed)}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{key}: {msg}{shown}" if loc else msg


def _fields_at(cls: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = cls
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            break
        field = model.model_fields.get(part)
        if field is None:
            break
        model = _model_in(field.annotation) or model
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _is_text_field(cls: type[BaseModel], dotted: str) -> bool:
    """Whether the field at `dotted` is a str (or optional str) field; dict-of-model levels (like
    engines.NAME) take one key part."""
    model: Any = cls
    parts = dotted.split(".")
    i = 0
    while i < len(parts):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
        field = model.model_fields.get(parts[i])
        if field is None:
            return False
        annotation = field.annotation
        if i == len(parts) - 1:
            args = set(typing.get_args(annotation)) - {type(None)}
            return annotation is str or (bool(args) and args == {str})
        sub = _model_in(annotation)
        if sub is None:
            return False
        if typing.get_origin(annotation) is dict:
            i += 1  # the entry's name
        model = sub
        i += 1
    return False


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel a field holds (directly, optionally, or as dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None


def config_help(cls: type[BaseModel], *, prog: str | None = None) -> str:
    doc = (cls.__doc__ or "").strip()
    lines = [
        f"usage: {prog or 'python ' + sys.argv[0]} [--preset NAME] [--config FILE.yaml] [--key.sub=VALUE ...]",
        "",
        doc,
        "",
        "Values: class defaults, then --preset, then --config, then flags (YAML syntax: 3, true, null, [a, b]).",
    ]
    for name, settings in presets(cls).items():
        lines.append(f"--preset {name}: " + ", ".join(_flat(settings)) + " (docs/method.md).")
    if embedded_default(cls):
        lines.append("Without --config (the embedded default) these also apply, before flags: "
                     + ", ".join(_flat(embedded_default(cls))) + ".")
    lines.append("Fields:")
    _help_lines(cls(), "", lines)
    return "\n".join(lines)


def _help_lines(model: BaseModel, prefix: str, out: list[str]) -> None:
    """One line per leaf field, showing the defaults as the parent model sets them."""
    for name, field in type(model).model_fields.items():
        key = f"{prefix}{name}"
        sub = _model_in(field.annotation)
        value = getattr(model, name)
        desc = " ".join((field.description or "").split())
        if sub is not None and isinstance(value, dict):
            out.append(f"  --{key}.NAME.*  {desc} Default names: {sorted(value)}.")
            for entry, sub_value in value.items():
                _help_lines(sub_value, f"{key}.{entry}.", out)
        elif isinstance(value, BaseModel):
            _help_lines(value, f"{key}.", out)
        else:
            shown = value.value if isinstance(value, Enum) else value
            out.append(f"  --{key}  [{_type_name(field.annotation)}, default {shown!r}]  {desc}")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "|".join(m.value for m in annotation)
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return annotation.__name__
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return str(annotation).replace("typing.", "")
