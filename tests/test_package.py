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


def test_import_ewc_loads_no_optional_dependency():
    core = "ewc, ewc.fisher, ewc.penalties, ewc.training, ewc.data, ewc.benchmarks, ewc.models"
    code = (
        f"import sys, {core}\n"
        "optional = {'safetensors', 'matplotlib', 'backpack', 'nngeometry'}\n"
        "print(sorted(optional & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_package_is_typed():
    assert (Path(ewc.__file__).parent / "py.typed").is_file()
