"""Your own code in `ewc run`: a ``"pkg.module:function"`` string, imported and checked.

``model.factory`` and ``benchmark.factory`` name a function by the module that defines it and its
name, as entry points and ``uvicorn`` do. The module is imported from ``sys.path``; ``ewc run`` and
``ewc sweep`` put the current directory first on it, as ``python -m`` does, so a package in the
folder you run from is found (or set ``PYTHONPATH``). Every failure is a `FactoryError` that names
the config key, the string and what went wrong.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any


class FactoryError(ValueError):
    """A factory string that cannot be used: malformed, not importable, missing, or bad output."""


def load_function(spec: str, key: str, argument: str = "") -> Callable[..., Any]:
    """The function ``spec`` = ``"pkg.module:function"`` names (``key`` is its config key).

    ``function`` may be a dotted path inside the module (``"pkg.module:Class.build"``). With
    ``argument`` (what the one argument is, e.g. ``"seed: int"``), it must accept one argument.

    Raises:
        FactoryError: ``spec`` is not of that form, the module does not import, it has no such
            attribute, the attribute is not callable, or it cannot take one argument.
    """
    where = f"{key} = {spec!r}"
    module_name, sep, attribute = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not _dotted(module_name) or not _dotted(attribute):
        raise FactoryError(
            f"{where} is not of the form 'pkg.module:function' (e.g. 'own_tasks.model:make_model')"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may raise anything while it imports
        raise FactoryError(
            f"{where}: module {module_name!r} cannot be imported ({type(error).__name__}: "
            f"{error}); run from the folder that holds it or add that folder to PYTHONPATH"
        ) from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            own = ", ".join(_own_functions(module)) or "none"
            raise FactoryError(
                f"{where}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                f"{attribute!r}; the public functions it defines: {own}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise FactoryError(f"{where} is a {type(target).__name__}, not a function")
    if argument:
        _check_one_argument(target, where, argument)
    return target


def _check_one_argument(function: Callable[..., Any], where: str, argument: str) -> None:
    """Refuse a function that cannot be called with one positional argument."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some built-ins have none: the call will tell
        return
    try:
        signature.bind(None)
    except TypeError:
        raise FactoryError(
            f"{where} must take one argument ({argument}); its signature is {signature}"
        ) from None


def import_from_working_directory() -> None:
    """Put the current directory first on ``sys.path`` (as ``python -m`` does) if it is not on it.

    Called by the command line only, before a config's factories are imported.
    """
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)


def _own_functions(module: Any) -> list[str]:
    """The public callables defined in ``module`` itself (not imported into it), sorted."""
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and callable(value)
        and getattr(value, "__module__", None) == module.__name__
    )


def _dotted(name: str) -> bool:
    """Whether ``name`` is a dotted Python identifier path (``a.b_c.d``)."""
    return bool(name) and all(part.isidentifier() for part in name.split("."))
