"""The gradcheck command line (`gradcheck.cli.main:cli`)."""

# The one place the version is written: pyproject.toml reads it (`[tool.setuptools.dynamic]`), and
# `gradcheck --version` prints it without importing importlib.metadata (30 ms, most of a bare start-up).
__version__ = "0.1.0"
