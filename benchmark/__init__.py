"""The benchmark runner: a paper table -> content-hashed stages -> results/<profile>/table_<N>.*

Entry point: `python -m benchmark.run table=III` (run.py, the command line). The flow of one table
(docs/architecture.md): `stages` (the table spec -> the stage graph, hashing) -> `run_table` (checks,
then the pending stages) -> `local` (one stage here) / `cluster` (SLURM job arrays) / `shards` (a
stage split over test clips) / `job` (one stage by hash in a fresh process) -> `stage_runner` (the
protocol) with `trainer_runner` (train / generate / evaluate via trainers/ and metrics/) -> `store`
(runs/<hash>/) -> `render` (cells from the store) with `tables` and `figures`. `perf/` times things.
"""
