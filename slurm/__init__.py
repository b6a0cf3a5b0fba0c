"""Running the benchmark's stage graph as SLURM job arrays (submitit), and a local test cluster.

- `slurm.config`   cluster settings (configs/slurm/<name>.yaml) with per-stage-kind overrides
- `slurm.plan`     which stages go into which array, and which jobs each task waits for
- `slurm.task`     what a job runs: one stage by hash, through the same code as the local loop
- `slurm.launch`   submitting the arrays, recording job ids, waiting, rendering
- `slurm.records`  `runs/<hash>/slurm.json` and the state of recorded jobs (squeue / sacct)
- `slurm.multigpu` `accelerate launch` for training on several GPUs inside one job
- `start-local-slurm.sh` / `stop-local-slurm.sh`: a real one-node SLURM on Debian, for tests and CI

The experiment logic lives in benchmark/ (stages, store, runner); nothing here decides what a
stage computes. docs/slurm.md is the user documentation.
"""
