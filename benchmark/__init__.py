"""The benchmark runner: a paper table -> content-hashed stages -> results/<profile>/table_<N>.*

Entry point: `python -m benchmark.run table=III` (benchmark/run.py). Pieces: `stages` (expansion,
hashing), `store` (runs/<hash>/, atomic writes), `executors` (the StageRunner protocol, FakeRunner),
`runner_impl` (the real runner), `runner` (the loop), `tables` and `plots` (rendering).
"""
