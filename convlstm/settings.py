"""How a setting is defined once and checked: type, default, range and help in one dataclass field.

Every entry point's settings are a dataclass (see ``convlstm.config``) whose fields are made with
:func:`setting`. From those fields ``convlstm.cli`` derives the click options, ``convlstm.mlproject``
the MLproject parameters, and :func:`check_fields` the validation, so a default, a range or a help
text lives in exactly one place. Nested dataclass fields (the model and region configs inside the
training settings) are flattened: their fields become flags of the same command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from convlstm.errors import ConfigError


@dataclass(frozen=True)
class Spec:
    """What a setting field carries besides its type and default.

    Parameters
    ----------
    help : str
        One line for ``--help`` and the README.
    group : str
        The heading it is listed under in ``--help``.
    low, high : float, optional
        Inclusive bounds, or exclusive ones with ``low_open`` / ``high_open``.
    choices : tuple of str
        The accepted values of a text setting.
    aliases : tuple of str
        Further flags accepted for it (the original documentation's names).
    cli : bool
        Whether it is a command-line flag (derived values such as ``input_channels`` are not).
    mlproject : bool
        Whether it is an MLproject parameter (e.g. ``experiment_name`` is set by ``mlflow run`` itself).
    """

    help: str
    group: str = "Options"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    cli: bool = True
    mlproject: bool = True


def setting(default: Any, help: str, **spec: Any) -> Any:  # noqa: A002 - the natural name
    """A dataclass field with its :class:`Spec`; list defaults are copied per instance.

    Parameters
    ----------
    default : object
        The one default of this setting.
    help : str
        Help text.
    **spec
        Further :class:`Spec` fields (``low``, ``choices``, ``group``, ...).

    Returns
    -------
    dataclasses.Field
        The field, to assign in a dataclass body.
    """
    metadata = {"setting": Spec(help=help, **spec)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=functools.partial(list, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Field:
    """One setting as the derived layers see it: name, type and spec (nested settings flattened).

    Parameters
    ----------
    name : str
        The field's name, also the MLproject parameter's.
    kind : type
        ``bool``, ``int``, ``float``, ``str``, ``list`` (of ``item``) or ``tuple`` (a pair of ``item``).
    item : type or None
        The element type of a list or tuple setting.
    optional : bool
        Whether None is accepted (``str | None``).
    default : object
        The default value.
    spec : Spec
        Help, group, bounds and choices.
    """

    name: str
    kind: type  # bool, int, float, str, list (of ``item``), tuple (pair of ``item``)
    item: type | None
    optional: bool
    default: Any
    spec: Spec

    @property
    def flag(self) -> str:
        """``--num-epochs`` for ``num_epochs``."""
        return flag_of(self.name)


def flag_of(name: str) -> str:
    """The command-line flag of a setting: ``--num-epochs`` for ``num_epochs``."""
    return "--" + name.replace("_", "-")


def _resolve(annotation: Any) -> tuple[type, type | None, bool]:
    """(kind, item type, optional) of a field annotation such as ``list[int]`` or ``str | None``."""
    args = typing.get_args(annotation)
    optional = isinstance(annotation, types.UnionType) and type(None) in args
    if optional:
        (annotation,) = [arg for arg in args if arg is not type(None)]
        args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return origin, args[0], optional
    return annotation, None, optional


def nested(cls: type) -> dict[str, type]:
    """The fields of a settings class that hold another settings dataclass (flattened into its flags).

    Parameters
    ----------
    cls : type
        A settings dataclass, e.g. ``TrainSettings``.

    Returns
    -------
    dict of str to type
        Field name → the nested settings class.
    """
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def fields_of(cls: type, flat: bool = True) -> Iterator[Field]:
    """Every setting of ``cls`` in declaration order, the nested settings' fields in place of their holder.

    Parameters
    ----------
    cls : type
        A settings dataclass.
    flat : bool
        Whether nested settings' fields are included (False: ``cls``'s own fields only).

    Yields
    ------
    Field
        One per setting; fields made without :func:`setting` are skipped.
    """
    hints = typing.get_type_hints(cls)
    holders = nested(cls)
    for f in dataclasses.fields(cls):
        if f.name in holders:
            yield from fields_of(holders[f.name]) if flat else ()
        elif "setting" in f.metadata:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            yield Field(f.name, *_resolve(hints[f.name]), default, f.metadata["setting"])


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of ``cls`` from flat values (the nested settings built from the same dict).

    Parameters
    ----------
    cls : type
        A settings dataclass.
    values : dict
        Flat ``name -> value``, as a command line gives them; names not given keep their default.

    Returns
    -------
    object
        The settings, checked by their ``__post_init__``.
    """
    holders = nested(cls)
    kwargs = {name: build(holder, values) for name, holder in holders.items()}
    kwargs.update({f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values and f.name not in holders})
    return cls(**kwargs)


def flatten(settings: Any) -> dict[str, Any]:
    """Flat ``name -> value`` of every setting (nested ones included): what MLflow logs as params.

    Parameters
    ----------
    settings : Settings
        Any settings instance; nested settings are walked.

    Returns
    -------
    dict
        The values as they are (not yet text; see :func:`as_text`).
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value))
        elif "setting" in f.metadata:
            out[f.name] = value
    return out


#: The text of an unset optional setting. Not ``''``: ``mlflow run`` logs each -P value shell-quoted
#: (``shlex.quote``), so an empty value would show as ``''`` in the MLflow UI; ``none`` needs no quoting.
UNSET = "none"


def as_text(value: Any) -> str:
    """A setting's value as the text a command line takes: ``true``, ``16,32,64``, ``none`` for None.

    Every default's text is one shell word without quotes, because ``mlflow run`` logs the params it
    passes shell-quoted: ``16 32 64`` would show as ``'16 32 64'`` (the command line reads both forms).

    Parameters
    ----------
    value : object
        A setting's value.

    Returns
    -------
    str
        The text (also what MLflow shows as the run's param).
    """
    if value is None:
        return UNSET
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, numbers.Real) else str(v) for v in value)
    return str(value)


def describe(field: Field) -> str:
    """What a valid value looks like, e.g. ``'an integer >= 1'`` or ``'one of raise, drop, fill'``.

    Parameters
    ----------
    field : Field
        The setting.

    Returns
    -------
    str
        A phrase for ``--help`` and error messages.
    """
    if field.spec.choices:
        return "one of " + ", ".join(field.spec.choices)
    noun = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[field.item or field.kind]
    bounds = []
    if field.spec.low is not None:
        bounds.append(f"{'>' if field.spec.low_open else '>='} {field.spec.low:g}")
    if field.spec.high is not None:
        bounds.append(f"{'<' if field.spec.high_open else '<='} {field.spec.high:g}")
    text = f"{noun} {' and '.join(bounds)}".strip()
    if field.kind is list:
        return f"one or more values, each {text}"
    if field.kind is tuple:
        return f"two values, each {text}"
    return text


def _check_value(field: Field, value: Any) -> Any:
    """``value`` converted to the field's type, or a ConfigError saying what was expected."""
    kind, spec = field.item or field.kind, field.spec
    ok = True
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        value = int(value) if ok else value
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str) and (not spec.choices or value in spec.choices)
    if ok and spec.low is not None:
        ok = value > spec.low if spec.low_open else value >= spec.low
    if ok and spec.high is not None:
        ok = value < spec.high if spec.high_open else value <= spec.high
    if not ok:
        raise ConfigError(f"{field.name} ({field.flag}) must be {describe(field)}, got {value!r}.", field.name)
    return value


class Settings:
    """Base of the settings dataclasses: checked when made, and round-tripped through a plain dict (the
    dict that becomes MLflow params, rides in every checkpoint and rebuilds the model without the command line)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Append a numpydoc Parameters section made of the fields' help texts (written once, in the fields)."""
        super().__init_subclass__(**kwargs)
        lines = []
        for name, annotation in cls.__dict__.get("__annotations__", {}).items():
            value = cls.__dict__.get(name)
            spec = value.metadata.get("setting") if isinstance(value, dataclasses.Field) else None
            lines.append(f"{name} : {annotation}\n    {spec.help if spec else 'Nested settings; their fields are flags too.'}")
        cls.__doc__ = inspect.cleandoc(cls.__doc__ or '') + '\n\nParameters\n----------\n' + '\n'.join(lines)

    def __post_init__(self) -> None:
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain values (nested settings as nested dicts).

        Returns
        -------
        dict
            What :meth:`from_dict` takes back; stored in checkpoints and the demo data's provenance.
        """
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """Rebuild from :meth:`to_dict` output; keys this version does not know are refused, not ignored.

        Parameters
        ----------
        values : dict
            Field values; missing ones take their default.

        Returns
        -------
        Settings
            The settings, checked.
        """
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ConfigError(f"Unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}.")
        holders = nested(cls)
        return cls(**{k: holders[k].from_dict(v) if k in holders else v for k, v in values.items()})


def check_fields(settings: Any) -> None:
    """Check (and normalize: ints to floats where a number is asked, lists copied) every setting's value.

    Called from each settings class's ``__post_init__``; nested settings check themselves.

    Parameters
    ----------
    settings : dataclass instance
        The settings to check in place.

    Raises
    ------
    ConfigError
        Naming the setting, its flag, what is expected and what was given.
    """
    for field in fields_of(type(settings), flat=False):
        value = getattr(settings, field.name)
        if value is None and field.optional:
            continue
        if field.kind in (list, tuple):
            items = list(value) if isinstance(value, (list, tuple)) else None
            if not items or (field.kind is tuple and len(items) != 2):
                raise ConfigError(f"{field.name} ({field.flag}) must be {describe(field)}, got {value!r}.", field.name)
            value = field.kind(_check_value(field, item) for item in items)
        else:
            value = _check_value(field, value)
        setattr(settings, field.name, value)
