"""Configs that round-trip through a plain dict (MLflow params, checkpoints, JSON)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

from convlstm.errors import DataError

T = TypeVar("T", bound="DictRoundTrip")


class DictRoundTrip:
    """Mixin for dataclasses: ``to_dict`` and a strict ``from_dict`` that refuses unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        """Rebuild from ``to_dict`` output; keys this version does not know are refused, not ignored."""
        unknown = set(values) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise DataError(f"Unknown {cls.__name__} setting(s): {', '.join(sorted(unknown))}.")
        return cls(**values)
