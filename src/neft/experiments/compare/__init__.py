"""`neft compare`: methods at matched trainable-parameter budgets on one task.

    from neft.compare import compare
    compare("benchmarks/compare/ddtp-en-de.yaml")   # or a dict of the same keys

A grid of cells (NeFT at several budgets, LoRA at the matching ranks, full FT, FT-in|out,
random or reversed neurons), each trained with the same data, steps and seeds after a
small learning-rate sweep scored on dev loss, then evaluated on the test split. Every
run is its own process and folder; finished runs are never recomputed; the results go
into compare.md, compare.json and compare.png. See plan.py (the config), runner.py
(the grid), worker.py (one run) and report.py (the outputs).
"""

from .plan import CompareConfig, Plan, build_plan
from .runner import compare, run_compare

__all__ = ["CompareConfig", "Plan", "build_plan", "compare", "run_compare"]
