"""Run a benchmark suite (it builds its own export from untrained tasks) and print the table.

    python examples/benchmark_suite.py cpu-quick --results bench-out

Suites live in subtune_edge/bench/suites/*.toml; pass a path to your own. The report (results.json,
report.md, PNG plots) records the device and versions it was measured with.
"""

from __future__ import annotations

import argparse

from subtune_edge.bench import load_suite, run_suite


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", help="cpu-quick, desktop-gpu, jetson-orin or a .toml path")
    p.add_argument("--results", default="bench-out")
    p.add_argument("--backend", action="append", help="override the suite's backends (repeatable)")
    p.add_argument("--batch", type=int, action="append", help="override the suite's batch sizes (repeatable)")
    args = p.parse_args(argv)

    results, paths = run_suite(load_suite(args.suite), args.results, backends=args.backend, batch_sizes=args.batch)
    for r in results["rows"]:
        print(f"{r['backend']:>10} batch {r['batch']:>2} k={r['k']}: fused {r['fused']['median_ms']:.2f} ms, "
              f"separate {r['separate']['median_ms']:.2f} ms, ratio {r['ratio']:.3f} "
              f"(FLOPs ideal {r['ideal_ratio_flops']:.3f})")
    for s in results["skipped"]:
        print(f"skipped {s['backend']}: {s['reason']}")
    print(f"report: {paths['markdown']}")
    return results


if __name__ == "__main__":
    main()
