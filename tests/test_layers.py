"""The analysis layer stays pure: importing it pulls in neither click nor rich."""

from __future__ import annotations

import subprocess
import sys


def test_analysis_imports_neither_click_nor_rich() -> None:
    code = (
        "import sys, pkgutil, importlib, gradcheck.analysis as a\n"
        "for m in pkgutil.iter_modules(a.__path__): importlib.import_module('gradcheck.analysis.' + m.name)\n"
        "print(sorted(n for n in ('click', 'rich') if n in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_generic_top_level_packages_importable() -> None:
    code = "import importlib.util as u; print([n for n in ('cli', 'analysis') if u.find_spec(n)])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.strip() == "[]"
