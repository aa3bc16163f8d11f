"""The installed package's version (a leaf every layer may read)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("specwidgets")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
