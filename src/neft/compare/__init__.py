"""`neft.compare` is kept as an import path; the harness lives in neft.experiments.compare."""

from ..experiments.compare import CompareConfig, Plan, build_plan, compare, run_compare

__all__ = ["CompareConfig", "Plan", "build_plan", "compare", "run_compare"]
