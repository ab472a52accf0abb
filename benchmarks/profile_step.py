"""Where a training step's time goes, per op (torch.profiler), for one `neft bench` mode.

    .venv/bin/python benchmarks/profile_step.py neft paper-6     # or floor lora-r8, lora ...

Builds the model and mode exactly as `neft bench` does (random SmolLM2-135M shape, batch
4 x 128, fused AdamW), runs 3 warm-up and 3 timed steps, then profiles 2 more.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from neft.experiments.bench import build_model, forward_loss, make_batches, prepare, resolve

MODEL = "smollm2-135m-random"


def main(mode: str, budget: str) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    neurons, rank = resolve(budget, build_model(MODEL, torch.float32, "meta"))
    model, _ = prepare(build_model(MODEL, torch.float32, "cpu"), mode, neurons, rank, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True) if params else None
    embeddings = model.get_input_embeddings()
    batches = make_batches(8, 4, 128, embeddings.num_embeddings, 0, torch.device("cpu"))

    def step(ids: torch.Tensor) -> None:
        forward_loss(model, mode, ids).backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for ids in batches[:3]:
        step(ids)
    times = []
    for ids in batches[3:6]:
        start = time.perf_counter()
        step(ids)
        times.append(round(time.perf_counter() - start, 3))
    print(f"{mode} @ {budget}: step seconds {times}")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for ids in batches[6:]:
            step(ids)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22))


if __name__ == "__main__":
    main(*(sys.argv[1:3] if len(sys.argv) >= 3 else ("neft", "paper-6")))
