"""The optimize workflow: run the registered passes, verify numerically, report."""

from modelpress.optimize.workflow import OptimizeReport, optimize_file, optimize_model

__all__ = ["OptimizeReport", "optimize_file", "optimize_model"]
