"""Benchmarks. `python -m bench`: Sluice vs restate-server, end to end; `python -m bench.sdk_bench`:
the SDK's CPU per journal entry and replay time vs restate-sdk. Results go to bench/results/."""
