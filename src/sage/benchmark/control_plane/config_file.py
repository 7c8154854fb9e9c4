"""Config files of ``sage-cp-bench``: read (``--config``), written (``config``), checked
(``validate``).

A config file holds the same settings as the options of ``run``, ``compare`` and ``sweep``:
its keys are their long option names with underscores (``requests``, ``rate``,
``llm_ratio``; ``policy`` and ``policies`` are the same key), its values what the option
takes (``policies``, ``rate``, ``instance_costs`` and ``instance_speeds`` may also be
lists, ``sim_profile`` a table). It may be TOML
(``.toml``; what ``sage-cp-bench config`` writes, with a comment per key), JSON (``.json``)
or YAML (``.yaml``, ``.yml``; needs PyYAML). An option given on the command line overrides
its key.

The keys are read off the command's own signature (:func:`file_keys`), so a new option is a
new key with no second list to keep in step.

Example:
    >>> def bench(requests: Annotated[int, typer.Option("--requests", "-n")] = 100) -> None: ...
    >>> key = file_keys(bench)["requests"]
    >>> key.spellings, key.type, key.default
    (('requests',), <class 'int'>, 100)
    >>> print(render_toml(file_keys(bench), "llm").splitlines()[-1])
    requests = 100
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import re
import textwrap
import tomllib
import types
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer

from sage.benchmark.control_plane.options import IMPLIED, applies, config_from_options
from sage.common.errors import ConfigError, unknown_key

__all__ = [
    "ConfigFileError",
    "FileKey",
    "Problem",
    "check",
    "file_keys",
    "ignored",
    "load",
    "read",
    "render_toml",
]

SUFFIXES = (".toml", ".json", ".yaml", ".yml")


@dataclass(frozen=True)
class FileKey:
    """One key of a config file: an option of the command.

    Attributes:
        name: The key as written (the option's parameter name, ``llm_ratio``).
        spellings: Every accepted spelling: each long option name with underscores.
        type: ``int``, ``float``, ``bool``, ``str`` or ``Path``.
        choices: The allowed strings (an option of a ``Literal`` type), else empty.
        default: The option's default (``None``: unset).
        help: The option's help text.
    """

    name: str
    spellings: tuple[str, ...]
    type: type
    choices: tuple[str, ...]
    default: Any
    help: str


@dataclass(frozen=True)
class Problem:
    """What is wrong with one key of a file (``key`` is ``""`` for the file as a whole)."""

    key: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.key or "the file as a whole"
        return f"{where}{f' (line {self.line})' if self.line else ''}: {self.message}"


class ConfigFileError(ConfigError):
    """A config file that cannot be used; lists every problem found in it."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path, self.problems = path, problems
        count = f"{len(problems)} problem{'s' * (len(problems) != 1)}"
        super().__init__(f"{path}: {count}:\n" + "\n".join(f"  {p}" for p in problems))


def _base_type(annotation: Any) -> tuple[type, tuple[str, ...]]:
    """``(type, choices)`` of an option's annotation (``None`` taken out of unions)."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return str, tuple(str(a) for a in get_args(annotation))
    return annotation, ()


def file_keys(command: Callable[..., Any], exclude: Collection[str] = ()) -> dict[str, FileKey]:
    """The keys of a config file for ``command`` (a Typer command function): one per option
    (parameter annotated with a ``typer.Option``), except those in ``exclude``."""
    keys: dict[str, FileKey] = {}
    for param in inspect.signature(command, eval_str=True).parameters.values():
        if get_origin(param.annotation) is not Annotated or param.name in exclude:
            continue
        base, *extras = get_args(param.annotation)
        info = next((e for e in extras if isinstance(e, typer.models.OptionInfo)), None)
        if info is None:
            continue
        decls = [d.split("/")[0] for d in (info.param_decls or ()) if d.startswith("--")]
        spellings = [d[2:].replace("-", "_") for d in decls]
        kind, choices = _base_type(base)
        keys[param.name] = FileKey(
            param.name,
            tuple(dict.fromkeys([param.name, *spellings])),
            kind,
            choices,
            param.default,
            " ".join(str(info.help or "").split()),
        )
    return keys


# -- reading ------------------------------------------------------------------------------


def read(path: Path) -> tuple[dict[str, Any], str]:
    """The file's top-level mapping and its text (by its suffix: TOML, JSON or YAML).

    Raises:
        ConfigError: it cannot be read or parsed (the message gives the line), or its suffix
            is none of ``.toml``, ``.json``, ``.yaml``, ``.yml``.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"{path}: unknown config file type {suffix or '(no suffix)'!r}; name it *.toml, "
            "*.json or *.yaml (sage-cp-bench config -o bench.toml writes one)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    data: Any
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = _yaml(path, text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: must hold key = value settings at the top level, not a {type(data).__name__}"
        )
    return data, text


def _yaml(path: Path, text: str) -> Any:
    try:
        yaml = importlib.import_module("yaml")  # optional, untyped: PyYAML
    except ImportError:
        raise ConfigError(
            f"{path}: reading YAML needs PyYAML (pip install pyyaml); or write the settings as "
            "TOML: sage-cp-bench config -o bench.toml"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


_KEY_LINE = {
    ".toml": re.compile(r"""^\s*\[?\s*["']?([A-Za-z0-9_-]+)["']?\s*(?:=|\])"""),
    ".json": re.compile(r""""([^"]+)"\s*:"""),
    ".yaml": re.compile(r"""^["']?([A-Za-z0-9_-]+)["']?\s*:"""),
}


def _lines(text: str, suffix: str) -> dict[str, int]:
    """The line (1-based) where each key is first set."""
    pattern = _KEY_LINE[".yaml" if suffix == ".yml" else suffix]
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        for match in pattern.finditer(line):
            lines.setdefault(match.group(1), number)
    return lines


def _example(key: FileKey) -> str:
    return "" if key.default is None else f"; e.g. {key.name} = {_toml(key.default)}"


def _convert(key: FileKey, value: Any) -> Any:
    """``value`` as the option's type (the CLI's value); raises ``ValueError`` saying why."""
    if value is None:
        if key.default is None:
            return None
        raise ValueError(f"null is only allowed for keys unset by default{_example(key)}")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if key.type is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} must be true or false")
        return value
    if key.type is int:
        if not (is_number and float(value).is_integer()):
            raise ValueError(f"{value!r} must be a whole number{_example(key)}")
        return int(value)
    if key.type is float:
        if not is_number:
            raise ValueError(f"{value!r} must be a number{_example(key)}")
        return float(value)
    if key.choices:
        if value not in key.choices:
            close = difflib.get_close_matches(str(value), key.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{value!r} is not one of {', '.join(key.choices)}{hint}")
        return value
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ",".join(str(v) for v in value)
    if isinstance(value, str) or is_number:
        return key.type(str(value)) if key.type is Path else str(value)
    raise ValueError(f"{value!r} must be a string; see: sage-cp-bench config")


def load(path: Path, keys: Mapping[str, FileKey]) -> tuple[dict[str, Any], list[Problem]]:
    """The file's values by key name, as the options' types, and the keys that are unknown,
    repeated or of the wrong type (those are left out of the values).

    Raises:
        ConfigError: the file cannot be read or parsed.
    """
    values, problems, _ = _load(path, keys)
    return values, problems


def _load(
    path: Path, keys: Mapping[str, FileKey]
) -> tuple[dict[str, Any], list[Problem], dict[str, int]]:
    data, text = read(path)
    lines = _lines(text, path.suffix.lower())
    spelling = {s: key.name for key in keys.values() for s in key.spellings}
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for given, value in data.items():
        line = lines.get(str(given))
        name = spelling.get(str(given))
        if name is None:
            where = f"{path.name} line {line}" if line else path.name
            message = str(unknown_key(given, where, sorted(keys)))
            problems.append(Problem(str(given), line, message.split(": ", 1)[1]))
            continue
        if name in seen:
            problems.append(Problem(str(given), line, f"sets {name} again (as {seen[name]!r})"))
            continue
        seen[name] = str(given)
        try:
            values[name] = _convert(keys[name], value)
        except ValueError as exc:
            problems.append(Problem(str(given), line, str(exc)))
    return values, problems, lines


def check(path: Path, keys: Mapping[str, FileKey]) -> dict[str, Any]:
    """The file's values (as :func:`load` gives them), each checked as the benchmark would
    check it: on its own (over the defaults, so each bad key is named), then all together
    (settings that clash).

    ``policies`` may list several and ``rate`` several (``sweep``): the file may serve
    every command; ``run`` itself takes one of each.

    Raises:
        ConfigFileError: the file has problems; it lists every one, by line.
        ConfigError: the file cannot be read or parsed.
    """
    values, problems, lines = _load(path, keys)
    defaults = {k.name: k.default for k in keys.values()}
    defaults.update(dict.fromkeys(k for k in IMPLIED if k in defaults))  # follow what is set
    mode = values.get("mode", defaults.get("mode"))

    def error(options: dict[str, Any]) -> str | None:
        several = "," in str(options.get("rate") or "")
        try:
            config_from_options("sweep" if several else "compare", options).validate()
        except ConfigError as exc:
            return str(exc)
        return None

    for name, value in values.items():
        if (message := error({**defaults, "mode": mode, name: value})) is not None:
            problems.append(Problem(name, _line(lines, keys[name]), message))
    if not problems and (message := error({**defaults, **values})) is not None:
        problems.append(Problem("", None, message))
    if problems:
        raise ConfigFileError(path, sorted(problems, key=lambda p: p.line or 1 << 30))
    return values


def _line(lines: Mapping[str, int], key: FileKey) -> int | None:
    return next((lines[s] for s in key.spellings if s in lines), None)


def ignored(values: Mapping[str, Any]) -> list[str]:
    """Keys of ``values`` that mean nothing in its mode (``llm_ratio`` outside hybrid)."""
    mode = str(values.get("mode", "llm"))
    return [name for name in values if not applies(mode, name)]


# -- writing ------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    """``value`` as a TOML value (strings as JSON strings, which TOML reads the same)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def render_toml(
    keys: Mapping[str, FileKey], mode: str, examples: Mapping[str, Any] | None = None
) -> str:
    """A TOML config file of every key that applies to ``mode``, each with its help as a
    comment and its default; keys unset by default are commented out, with a value from
    ``examples`` to uncomment. Read back, it gives the defaults."""
    examples = examples or {}
    out = [
        f"# sage-cp-bench settings (mode {mode}), for: sage-cp-bench run|compare|sweep "
        "--config FILE",
        "# Keys are the long options with underscores; an option given on the command line",
        "# overrides its key. Commented-out keys are unset (the comment says what that means):",
        "# uncomment one to set it. Check the file with: sage-cp-bench validate FILE",
    ]
    for key in keys.values():
        if not applies(mode, key.name):
            continue
        out.append("")
        out += textwrap.wrap(key.help, 94, initial_indent="# ", subsequent_indent="# ")
        value = mode if key.name == "mode" else key.default
        if value is None:
            out.append(f"# {key.name} = {_toml(examples.get(key.name, ''))}")
        else:
            out.append(f"{key.name} = {_toml(str(value) if isinstance(value, Path) else value)}")
    return "\n".join(out) + "\n"
