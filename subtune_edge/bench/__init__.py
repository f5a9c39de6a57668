"""The benchmark harness: added latency and memory per task, fused engine vs full-finetuned copies.

``subtune-edge bench`` drives it; ``subtune_edge/bench/suites/*.toml`` declare runs; results and the
machines they came from live in ``benchmarks/results/``.
"""

from subtune_edge.runtime.timing import Summary, added_per_task, summarize

from .harness import BenchConfig, Budget, Harness, prune_outputs
from .report import SCHEMA, check_results_dir, is_results_dir, markdown, plots, write_report
from .run import load_bench_tasks, run_bench, run_suite
from .suites import Suite, available, load_suite

__all__ = ["BenchConfig", "Budget", "Harness", "prune_outputs", "SCHEMA", "check_results_dir",
           "is_results_dir", "markdown", "plots", "write_report", "load_bench_tasks", "run_bench", "run_suite",
           "Summary", "added_per_task", "summarize", "Suite", "available", "load_suite"]
