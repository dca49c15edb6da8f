"""eagle-align: teach GUI agents to click for the right reason."""

__version__ = "0.1.0"
