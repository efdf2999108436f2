"""The package's version, in a module of its own: what imports it (provenance, the report, the
server, `selfmm --version`) then imports nothing above it, not the package's front door."""

__version__ = "0.1.0"
