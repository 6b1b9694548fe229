"""Speed benchmarks of imageretrieval: development tools kept out of the installable package.

Run from a checkout: `python -m benchmarks encoder|pipeline|serve [options]` (each writes its
section of docs/benchmarks.md through `report.write_section`, unless `--no-write`).
"""
