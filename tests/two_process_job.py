"""Run by tests/test_training.py under `torchrun --nproc_per_node 2` (fresh processes: forking a process whose
OpenMP pool is running can deadlock). Trains 2 steps on 2 CPU processes (gloo) and checks the ranks agree."""

import sys

import torch

torch.set_num_threads(1)

from test_training import run  # noqa: E402

model, accelerator = run(sys.argv[1], steps=2)
assert accelerator.num_processes == 2, accelerator.num_processes
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = accelerator.gather(flat[None])
assert torch.allclose(gathered[0], gathered[1]), "ranks disagree after training"
accelerator.print("two-process training ok")
