"""The package as users get it: the public API, and a core that needs nothing but torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ewc


def test_the_public_api_is_importable_and_documented():
    for name in ewc.__all__:
        obj = getattr(ewc, name)
        assert name == "__version__" or obj.__doc__, f"ewc.{name} has no docstring"


def _loaded_modules(imports: str) -> set[str]:
    """The names in sys.modules after importing ``imports`` in a fresh interpreter."""
    code = f"import sys, {imports}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_import_ewc_loads_no_optional_dependency():
    imports = "ewc, ewc.data, ewc.experiment.streams.benchmarks, ewc.experiment.models"
    optional = {"safetensors", "matplotlib", "backpack", "nngeometry", "optuna"}
    assert optional & _loaded_modules(imports) == set()


def test_the_library_imports_nothing_of_the_layers_above_it():
    """The core (Fisher, penalties, training) knows neither experiment/, data/, report/ nor cli."""
    loaded = _loaded_modules("ewc, ewc.fisher, ewc.penalties, ewc.training")
    above = ("ewc.experiment", "ewc.data", "ewc.report", "ewc.cli")
    leaked = sorted(m for m in loaded if m.startswith(above))
    assert leaked == []
    assert "ewc.fisher" in loaded  # the probe did import the core


def test_data_imports_nothing_of_the_experiment_kit_report_or_cli():
    loaded = _loaded_modules("ewc.data")
    leaked = sorted(m for m in loaded if m.startswith(("ewc.experiment", "ewc.report", "ewc.cli")))
    assert leaked == []


def test_the_package_is_typed():
    assert (Path(ewc.__file__).parent / "py.typed").is_file()
