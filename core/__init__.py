"""reid-core: a plugin framework for object re-identification research."""

__version__ = "0.1.0"
