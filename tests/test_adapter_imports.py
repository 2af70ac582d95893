"""Importing the adapter modules imports no framework: only looking up GradcheckCallback does."""

import subprocess
import sys


def test_adapter_modules_import_no_framework() -> None:
    code = (
        "import sys, gradcheck.recording.lightning, gradcheck.recording.transformers, gradcheck.recording.torch\n"
        "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'accelerate') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_unknown_attribute_is_an_attribute_error() -> None:
    import gradcheck.recording.lightning as adapter

    try:
        adapter.NoSuchThing  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("expected AttributeError")
