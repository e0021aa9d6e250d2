"""attnrec: recommendation by attention allocation."""

__version__ = "0.1.0"
