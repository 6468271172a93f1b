"""rtn: a DuckDB warehouse for rare-token neurons."""
__version__ = "0.1.0"
