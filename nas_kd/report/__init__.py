"""The Pareto-front report of a run directory: ``write_report(run_dir)`` -> self-contained report.html.

Layout, like ``optuna.visualization``: ``data`` prepares each figure's data (pure functions over the
trials table), ``figures`` draws it, ``run`` loads a run directory, ``html`` assembles the page and the
optional PNGs.
"""

from nas_kd.report.html import write_report
from nas_kd.report.run import ReportError, RunData, load_run

__all__ = ["ReportError", "RunData", "load_run", "write_report"]
