"""The search space of a sweep: one YAML file (``space.yaml`` beside this module is the default), checked
before any trial starts, and turned into Optuna suggestions and training settings.

Every entry names a setting of :class:`~convlstm.config.ConvLSTMConfig`, so a sampled value goes through
the same checks as the command line's (an even kernel or a negative rate is refused when the file is read,
not in trial 7).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from convlstm.config import ConvLSTMConfig
from convlstm.errors import ConfigError
from convlstm.settings import as_text, fields_of

DEFAULT_SPACE = Path(__file__).with_name("space.yaml")
#: The settings a space may vary: the model's command-line settings, except the epoch budget (a sweep's budget).
TUNABLE = {f.name: f for f in fields_of(ConvLSTMConfig) if f.spec.cli and f.name not in ("num_epochs", "seed")}
_KEYS = {"choices", "low", "high", "log", "step"}


@dataclass(frozen=True)
class Dimension:
    """One setting's range: categorical ``choices``, or ``low``..``high`` (``log``, ``step``).

    Parameters
    ----------
    name : str
        The setting (``learning_rate``).
    choices : tuple
        The values of a categorical dimension (lists for list settings); empty for a range.
    low, high : float or int, optional
        The bounds of a range (integers: an integer range).
    log : bool
        Log-uniform.
    step : float or int, optional
        Grid step of a range.
    """

    name: str
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def labels(self) -> list[Any]:
        """The choices as Optuna params: scalars as they are (numbers stay numbers), lists as ``16,32,64``."""
        return [as_text(choice) if isinstance(choice, list) else choice for choice in self.choices]

    def suggest(self, trial: Any) -> Any:
        """The trial's value, as the setting takes it."""
        if self.choices:
            return self.choices[self.labels.index(trial.suggest_categorical(self.name, self.labels))]
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def optuna_value(self, value: Any) -> Any | None:
        """``value`` as this dimension's Optuna param (to enqueue a base trial), or None when outside it."""
        if self.choices:
            texts = [as_text(choice) for choice in self.choices]
            return self.labels[texts.index(as_text(value))] if as_text(value) in texts else None
        return value if self.low <= value <= self.high else None  # type: ignore[operator]


def load_space(path: str | Path | None = None) -> list[Dimension]:
    """Read and check a search space file.

    Parameters
    ----------
    path : str or pathlib.Path, optional
        A YAML file; None reads the default ``space.yaml``.

    Returns
    -------
    list of Dimension
        In the file's order.

    Raises
    ------
    ConfigError
        One line naming the file, the entry and what is wrong (setting ``space``).
    """
    path = Path(path) if path else DEFAULT_SPACE
    where = f"--space {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: the file does not exist.", "space")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]}).", "space") from None
    if not isinstance(content, dict) or not content:
        raise ConfigError(f"{where}: expected a mapping of settings to ranges, e.g. 'learning_rate: {{low: 1.0e-4, "
                          "high: 1.0e-2, log: true}'.", "space")
    return [_dimension(where, name, spec) for name, spec in content.items()]


def _dimension(where: str, name: Any, spec: Any) -> Dimension:
    """One entry, checked: a known setting, a well-formed range, and every value the model accepts."""
    if name not in TUNABLE:
        raise ConfigError(f"{where}: '{name}' is not a setting a sweep can vary; use one of {', '.join(TUNABLE)}.", "space")
    if not isinstance(spec, dict) or not spec or set(spec) - _KEYS:
        raise ConfigError(f"{where}: {name} needs {{choices: [...]}} or {{low: ..., high: ...}} (optional log, step), "
                          f"got {spec!r}.", "space")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {name}: choices must be a non-empty list, alone, got {spec!r}.", "space")
        if len({as_text(choice) for choice in choices}) < len(choices):
            raise ConfigError(f"{where}: {name}: choices must differ, got {choices!r}.", "space")
        dimension = Dimension(name, choices=tuple(choices))
        values = choices
    else:
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)) \
                or not low < high:
            raise ConfigError(f"{where}: {name} needs numbers low < high, got low={low!r}, high={high!r}.", "space")
        if TUNABLE[name].kind is int and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"{where}: {name} is an integer setting: give integer bounds, got {low!r}..{high!r}.",
                              "space")
        log, step = bool(spec.get("log", False)), spec.get("step")
        if log and (low <= 0 or step is not None):
            raise ConfigError(f"{where}: {name}: log needs low > 0 and no step, got low={low!r}, step={step!r}.", "space")
        if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0):
            raise ConfigError(f"{where}: {name}: step must be a positive number, got {step!r}.", "space")
        dimension = Dimension(name, low=low, high=high, log=log, step=step)
        values = [low, high]
    for value in values:
        try:
            dataclasses.replace(ConvLSTMConfig(), **{name: value})
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}: {name} value {value!r} is not accepted: {exc}", "space") from None
    return dimension


def apply(config: ConvLSTMConfig, values: dict[str, Any]) -> ConvLSTMConfig:
    """``config`` with a trial's values (checked again, as any settings are).

    Parameters
    ----------
    config : ConvLSTMConfig
        The base configuration.
    values : dict
        Setting → value, as :meth:`Dimension.suggest` returned them.

    Returns
    -------
    ConvLSTMConfig
        A new configuration.
    """
    return dataclasses.replace(config, **values)


def base_params(space: list[Dimension], config: ConvLSTMConfig) -> dict[str, Any]:
    """The base configuration's values as Optuna params, for the dimensions that hold them (the first trial).

    Parameters
    ----------
    space : list of Dimension
        The search space.
    config : ConvLSTMConfig
        The base configuration (command line or defaults).

    Returns
    -------
    dict
        Param → value; dimensions whose range leaves the base value out are left to the sampler.
    """
    params = {}
    for dimension in space:
        value = dimension.optuna_value(getattr(config, dimension.name))
        if value is not None:
            params[dimension.name] = value
    return params
