"""The package version, importable by every module without importing the public API."""

__version__ = "0.1.0"
