"""Loading an experiment config: YAML (duplicate keys refused), ``--set`` overrides, validation to one line.

:func:`load_config` reads a file; :func:`parse_config` validates a mapping. Both raise one
:class:`~autoprune.errors.ConfigError` line naming the file (or override), the dotted field,
the bad value and what is allowed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from autoprune.config.messages import describe_validation_error, show_value
from autoprune.config.schema import ExperimentConfig
from autoprune.config.sections import SearchConfig
from autoprune.errors import ConfigError, one_line
from autoprune.search import searcher_class

log = logging.getLogger(__name__)


def load_config(path: str | Path, overrides: Iterable[str] = (), *, searcher: str | None = None) -> ExperimentConfig:
    """Read an experiment YAML file, apply ``overrides`` and validate.

    Args:
        path: The YAML file.
        overrides: ``"dotted.key=value"`` strings, the value read as YAML
            (``"search.episodes=20"``, ``"model.ignore=[fc]"``, ``"budget.target=null"``).
        searcher: Search with this searcher instead of the file's (``--searcher``): the file's
            ``search.params`` that only its own searcher takes are dropped (logged at INFO), so a
            config written for one searcher runs with another (see :func:`switch_searcher`).

    Returns:
        The validated config.

    Raises:
        ConfigError: one line naming the file (or the override), the field, the bad value
            and what is allowed; also for a missing file or a YAML syntax error.
    """
    source = str(path)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{source}: file not found") from e
    except IsADirectoryError as e:
        raise ConfigError(f"{source}: is a directory, expected a YAML file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: cannot read ({type(e).__name__}: {one_line(str(e))})") from e
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        raise ConfigError(_yaml_error(source, e)) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: YAML error: {one_line(str(e))}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections (model:, budget:, ...), "
            f"not {_yaml_type(data)}"
        )
    if searcher is not None:
        data = switch_searcher(data, searcher)
    return parse_config(data, source=source, overrides=overrides)


def switch_searcher(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A config mapping searched with ``name``: ``search.searcher`` set, the params only the replaced searcher takes dropped.

    A hyper-parameter the new searcher takes is kept, and so is one that no searcher named here
    takes (a typo is still refused when the config is validated).

    Raises:
        ConfigError: ``name`` (or the file's searcher) is unknown, or does not import.
    """
    data = _deep_copy(data)
    search = data.get("search")
    if search is None:
        search = data["search"] = {}
    elif not isinstance(search, dict):
        return data  # not a section: validation says so
    old = search.get("searcher") or SearchConfig.model_fields["searcher"].default
    new_cls = searcher_class(name)
    params = search.get("params")
    if old != name and isinstance(params, dict) and params:
        try:
            old_defaults = searcher_class(old).defaults if isinstance(old, str) else {}
        except ConfigError:  # the file's own searcher is unknown: it is replaced, its params are kept and checked
            old_defaults = {}
        dropped = [k for k in params if k in old_defaults and k not in new_cls.defaults]
        if dropped:
            log.info("--searcher %s: search.params %s dropped (hyper-parameters of %r, not of %r)", name, ", ".join(dropped), old, name)
            search["params"] = {k: v for k, v in params.items() if k not in dropped}
    search["searcher"] = name
    return data


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base': local keys may override merged ones
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let SafeLoader report it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {first.line + 1}); give each key once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _yaml_error(source: str, e: yaml.MarkedYAMLError) -> str:
    """``file:line:column: YAML syntax error: problem (context and where it started)``."""
    mark, ctx = e.problem_mark or e.context_mark, e.context_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    problem = e.problem or ""
    if e.context and ctx is not None and mark is not None and (ctx.line, ctx.column) != (mark.line, mark.column):
        problem += f" ({e.context} that starts at line {ctx.line + 1}, column {ctx.column + 1})"
    elif e.context:
        problem = f"{e.context}: {problem}" if problem else e.context
    return f"{where}: YAML syntax error: {one_line(problem)}"


def parse_config(data: Mapping[str, Any], *, source: str = "config", overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Validate an already-parsed config mapping; see :func:`load_config`.

    Args:
        data: The mapping (it is not modified).
        source: What to call it in error messages.
        overrides: ``"dotted.key=value"`` strings applied first.

    Raises:
        ConfigError: one line naming ``source`` (or the override), field, value and what is allowed.
    """
    data = _deep_copy(data)
    applied: list[tuple[tuple[str, ...], str]] = []
    for item in overrides:
        keys = _apply_override(data, item)
        applied.append((keys, item))
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, source, applied, ExperimentConfig)) from e


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _apply_override(data: dict[str, Any], item: str) -> tuple[str, ...]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    keys = tuple(key.split("."))
    if not sep or not key or any(not k for k in keys):
        raise ConfigError(f"override {item!r}: expected 'dotted.key=value', e.g. 'search.episodes=20'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({one_line(str(e))})") from e
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        # One line holds only flow-style collections: 'sqlite:///:memory:' or 'a: b' is a string, not a mapping.
        value = raw.strip()
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        elif not isinstance(child, dict):
            where = ".".join(keys[: i + 1])
            raise ConfigError(f"override {item!r}: {where} is {show_value(child)}, not a section with fields")
        node = child
    node[keys[-1]] = value
    return keys


# -- turning pydantic errors into one line -----------------------------------------------

def _yaml_type(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {show_value(value)}"


__all__ = ["load_config", "parse_config", "switch_searcher"]
