"""The package version, in one place (read by the facade, the command and every report).

Must not: import anything.
"""

__version__ = "0.1.0"
