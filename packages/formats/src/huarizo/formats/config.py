"""The base of every Huarizo config: a pydantic model loaded from YAML with `--set a.b=c` overrides.

Unknown keys and bad values are errors that name the key and where it came from (the file, or `--set`). The same
model is the Python API's argument, so a config file and a function call cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from huarizo.formats.errors import HuarizoError

CONFIG_ENTRY_POINTS = "huarizo.configs"


def cache_dir() -> Path:
    """Huarizo's cache folder (converted models, cached model replies): `$HUARIZO_CACHE`, else `~/.cache/huarizo`."""
    return Path(os.environ.get("HUARIZO_CACHE") or Path.home() / ".cache" / "huarizo")


class ConfigError(HuarizoError, ValueError):
    """A config that cannot be loaded: names the key and the file (or `--set`)."""


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a config dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=2e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
        except RecursionError:
            raise ConfigError(f"--set {key.strip()}: value nested too deeply") from None
        _set_path(data, key.strip(), value)
    return data


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML config file as a dict; every way it can fail to read is a `ConfigError` naming the file, the line (for
    bytes that are not UTF-8, the byte offset) and the cause."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a folder, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        line = raw.count(b"\n", 0, at) + 1
        raise ConfigError(
            f"{source}: line {line}: not UTF-8 text (byte 0x{raw[at]:02x} at byte offset {at}: {exc.reason})"
        ) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {where}not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    return loaded or {}


class HuarizoConfig(BaseModel):
    """Base class for command configs: strict keys, loadable from YAML with overrides."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        overrides: Sequence[str] = (),
        flags: Mapping[str, Any] | None = None,
    ) -> Self:
        """Load from a YAML file (or only from overrides when `path` is None) and validate.

        One precedence everywhere: the file, then `--set KEY=VALUE` overrides, then command-line flags (`flags` maps
        a dotted key to the flag's value). An error names where the bad value came from: the file, `--set` or the
        flag.
        """
        source = str(path) if path is not None else "the command line"
        data: dict[str, Any] = {}
        if path is not None:
            data = read_yaml(path)
        sources = {o.partition("=")[0].strip(): "--set" for o in overrides}
        apply_overrides(data, overrides)
        for key, value in (flags or {}).items():
            _set_path(data, key, value)
            sources[key] = "--" + key.replace(".", "-").replace("_", "-")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, source, sources, cls.__name__)) from None

    def to_yaml(self) -> str:
        """The resolved config as YAML (written beside every run's outputs)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _explain(exc: ValidationError, source: str, sources: Mapping[str, str], name: str) -> str:
    lines = [f"invalid {name} config:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        where = next((sources[k] for k in _prefixes(key) if k in sources), source)
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key {key!r}")
        elif err["type"] == "missing":
            lines.append(f"  {where}: missing required key {key!r}")
        else:
            lines.append(f"  {where}: {key}: {err['msg']} (got {err.get('input')!r})")
    if len(lines) == 2:  # one error: one line
        return f"{lines[0]} {lines[1].strip()}"
    return "\n".join(lines)


def _prefixes(key: str) -> list[str]:
    """`a.b.c` -> [`a.b.c`, `a.b`, `a`]: an error at `a.b.c` came from whoever set the closest of these."""
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def config_classes() -> dict[str, type[HuarizoConfig]]:
    """Config models contributed by the installed packages (entry point group `huarizo.configs`)."""
    return {ep.name: ep.load() for ep in entry_points(group=CONFIG_ENTRY_POINTS)}
