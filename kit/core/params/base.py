"""What every part of the schema shares: strict validation, and the error a params file raises."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator


class ParamsError(Exception):
    """A params file that cannot be used; the message names the key and the file."""


def _is_number(annotation: Any) -> bool:
    """int, float, or an optional or union of them (a Literal of strings is not)."""
    if annotation in (int, float):
        return True
    return bool(get_args(annotation)) and get_origin(annotation) is not Literal and any(
        _is_number(member) for member in get_args(annotation))


class Strict(BaseModel):
    """Unknown keys are errors; a value is checked again when it is assigned."""

    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, values: Any) -> Any:
        # Lax validation reads YAML's true as 1: for a count or a rate that is a slip, not a value.
        if isinstance(values, dict):
            for key, value in values.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and _is_number(field.annotation):
                    raise ValueError(f"key `{key}`: {str(value).lower()} is a boolean; give a number")
        return values
