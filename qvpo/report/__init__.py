"""Reporting commands: aggregate runs into tables, plot figures."""


def add_report_commands(sub) -> None:
    """Register the report subcommands (aggregate, plot) on the `qvpo` parser."""
