"""The ``MLproject`` file, derived from the settings classes: ``python -m convlstm.mlproject > MLproject``.

MLflow reads ``MLproject`` as a static file, so it is generated from ``convlstm.config`` and a test
fails when the committed file differs from what this module renders (a default, type or flag that
drifted). MLflow validates no parameter types and has no boolean type: booleans and lists are
strings (``"true"``, ``"16,32,64"``) and an unset optional parameter is ``"none"``, which the command
line reads as "not given". No default needs shell quotes: MLflow 3's launcher logs every -P value as
``shlex.quote`` writes it (``''``, ``'16 32 64'``), and MLflow refuses to correct a logged param.
"""

from __future__ import annotations

from convlstm.config import (
    CompareSettings,
    InferSettings,
    MakeDataSettings,
    PrepareSettings,
    SweepSettings,
    TrainSettings,
)
from convlstm.settings import Field, as_text, fields_of

#: Entry point name → its settings class (the command is ``python -m entrypoints.<name>``).
ENTRY_POINTS: dict[str, type] = {"prepare": PrepareSettings, "train": TrainSettings, "sweep": SweepSettings,
                                 "infer": InferSettings, "compare": CompareSettings, "make_data": MakeDataSettings}

HEADER = """\
# Generated from convlstm/config.py by `python -m convlstm.mlproject > MLproject`; edit the settings there.
name: convlstm

# conda is the default environment manager; where conda is absent add `--env-manager local`
# to run in the current Python environment (installed by the README's set-up command).
conda_env: conda.yaml

entry_points:
"""


def parameter(field: Field) -> tuple[str, str]:
    """The MLproject type and default (as YAML text) of a setting.

    Parameters
    ----------
    field : convlstm.settings.Field
        The setting.

    Returns
    -------
    tuple of str
        ``("int", "12")``, ``("string", '"16,32,64"')``, ...
    """
    if field.kind in (int, float) and not field.optional:
        return field.kind.__name__, repr(field.default)
    return "string", f'"{as_text(field.default)}"'


def render() -> str:
    """The whole ``MLproject`` text for every entry point.

    Returns
    -------
    str
        YAML, one parameter line per setting and a command passing each as its flag.
    """
    lines = [HEADER]
    for name, settings_cls in ENTRY_POINTS.items():
        fields = [f for f in fields_of(settings_cls) if f.spec.cli and f.spec.mlproject]
        lines.append(f"  {name}:\n    parameters:\n")
        for field in fields:
            kind, default = parameter(field)
            lines.append(f"      {field.name}: {{type: {kind}, default: {default}}}\n")
        lines.append(f"    command: >-\n      python -m entrypoints.{name}\n")
        lines.extend(f"      {field.flag} {{{field.name}}}\n" for field in fields)
        lines.append("\n")
    return "".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(render(), end="")
