"""Run by tests/test_trainer_ddp.py under `accelerate launch --num_processes 2`: process 1 sees a
non-finite loss, process 0 a finite one; each writes what Trainer.check_finite did to it."""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import Accelerator

from trainers.loop import Trainer

out = Path(sys.argv[1])
acc = Accelerator(cpu=True)
loss = torch.tensor(float("nan") if acc.process_index == 1 else 0.5)
stub = SimpleNamespace(acc=acc, state={"global_step": 4, "epoch": 1}, run_dir=out)
try:
    Trainer.check_finite(stub, {"loss_diff": loss, "loss": loss}, torch.tensor([1.0]))
    said = "no error"
except FloatingPointError as e:
    said = str(e)
(out / f"rank{acc.process_index}.txt").write_text(said)
acc.end_training()  # leaves the process group: gloo's threads must not outlive the interpreter
