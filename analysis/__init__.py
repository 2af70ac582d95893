"""The analysis layer: numpy in, plain data out (no click, no rich, no printing)."""

# The one place the version is written: pyproject.toml reads it (`[tool.setuptools.dynamic]`), and
# `gradcheck --version` prints it without importing importlib.metadata (~15-30 ms, a third of a bare start-up).
__version__ = "0.1.0"
