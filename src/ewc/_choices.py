"""String options as enums: a member or its string value is accepted, anything else is an error.

The error lists the valid values
(``unknown Fisher kind 'fisher'; valid kinds are 'exact', ...``).

A member is a ``str`` equal to its value, prints as its value and serialises to JSON as it, so an
option field can hold the enum while files and hashes see the plain string.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

_C = TypeVar("_C", bound="Choice")


class Choice(str, Enum):
    """Base of the option enums. ``__noun__`` names the option in errors: (singular, plural)."""

    __noun__: tuple[str, str] = ("value", "values")

    def __str__(self) -> str:
        """The option's string (``"adam"``, not ``"Optimizer.ADAM"``), in messages and paths."""
        return self.value

    def __format__(self, spec: str) -> str:
        """Format the option's string, so that f-strings show ``adam`` too."""
        return format(self.value, spec)

    @classmethod
    def parse(cls: type[_C], value: object) -> _C:
        """The member named by ``value``; raise ValueError listing the valid values otherwise."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            singular, plural = cls.__noun__
            valid = ", ".join(repr(member.value) for member in cls)
            raise ValueError(f"unknown {singular} {value!r}; valid {plural} are {valid}") from None
