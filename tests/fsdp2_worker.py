"""FSDP2 (``fully_shard``) with a hand-written loop, for tests/test_distributed.py.

    torchrun --nproc_per_node 2 tests/fsdp2_worker.py MODEL_DIR OUT_DIR

Runs on CPU (gloo) or one GPU per process (nccl). Every process also builds the
unsharded reference itself (the model is tiny), so each check compares the sharded run
with one process's result on the same global batch:

* scores of ``magnitude``, ``cosine`` and ``gradient`` on the sharded model;
* an adapter trained for a few AdamW steps, each rank on its part of the batch: the
  deltas, the base weights left untouched (the fast path must not write into FSDP's
  gathered buffers), and ``save_pretrained`` gathering on all ranks, writing on rank 0.

Rank 0 writes OUT_DIR/result.json with the largest differences seen (scores: relative to
each group's largest). Any of 1, 2, 3, 4 or 6 processes splits the batch evenly.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from neft import NeftConfig, get_neft_model
from neft.core.layers import NeuronDeltaLayer, is_dtensor
from neft.select import score_neurons, select_neurons

GLOBAL_BATCH, LENGTH, STEPS = 12, 12, 3  # 12: any of 1, 2, 3, 4 or 6 ranks


def load(model_dir: str, device: torch.device) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)


def shard(model: nn.Module) -> nn.Module:
    """One FSDP2 unit per decoder layer (the deltas live inside them), then the root."""
    decoder = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in decoder.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor], relative: bool = False
                   ) -> float:
    """Largest absolute difference, or relative to each tensor's largest value."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = x.double().cpu(), y.double().cpu()
        scale = float(y.abs().max().clamp_min(1e-30)) if relative else 1.0
        worst = max(worst, float((x - y).abs().max()) / scale)
    return worst


def train(model: nn.Module, ids: torch.Tensor) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(STEPS):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main(model_dir: str, out_dir: str) -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else (
        torch.device("cpu"))
    if cuda:
        torch.cuda.set_device(device)
    result: dict[str, float | bool] = {}

    # -- selection scores on a sharded model ----------------------------------------------
    generator = torch.Generator().manual_seed(0)
    vocab = load(model_dir, device).config.vocab_size
    tokens = torch.randint(3, vocab, (8, LENGTH), generator=generator)
    examples = [{"input_ids": t.tolist(), "labels": t.tolist()} for t in tokens]
    reference = load(model_dir, device)
    with torch.no_grad():  # a "fine-tuned" copy for cosine
        for param in reference.parameters():
            param.add_(torch.randn(param.shape, generator=generator).to(device) * 1e-3)
    options = {"magnitude": {}, "cosine": {"reference": reference},
               "gradient": {"data": examples, "steps": 3, "batch_size": 2}}
    sharded = shard(load(model_dir, device))
    for scorer, kwargs in options.items():
        one = score_neurons(load(model_dir, device), scorer, progress=False, **kwargs)
        split = score_neurons(sharded, scorer, progress=False, **kwargs)
        result[f"scores_{scorer}"] = max_difference(split.scores, one.scores, relative=True)
    del sharded

    # -- training ---------------------------------------------------------------------------
    neurons = select_neurons(load(model_dir, device), "random", neurons=6, seed=0,
                             progress=False)
    ids = torch.randint(3, vocab, (GLOBAL_BATCH, LENGTH), generator=generator).to(device)
    single = get_neft_model(load(model_dir, device), NeftConfig(neurons=neurons))
    train(single, ids)
    expected = single.adapter_state()

    base = load(model_dir, device)
    original = {k: v.detach().clone() for k, v in base.state_dict().items()}
    model = shard(get_neft_model(base, NeftConfig(neurons=neurons)))
    part = GLOBAL_BATCH // world
    train(model, ids[rank * part:(rank + 1) * part])
    layers = [m for m in model.modules() if isinstance(m, NeuronDeltaLayer)]
    result["deltas_are_dtensors"] = all(
        is_dtensor(m.neft_delta_rows) or not m.neft_rows.numel() for m in layers)
    result["fast_path_unused"] = all(m._original is None for m in layers)
    got = model.adapter_state()
    assert got.keys() == expected.keys()
    result["adapter"] = max_difference([got[k] for k in sorted(got)],
                                       [expected[k] for k in sorted(got)])
    result["trained"] = float(sum(v.abs().sum() for k, v in got.items() if "::delta_" in k))
    base_now = {k.replace(".base_layer.", "."): v.full_tensor() if is_dtensor(v) else v
                for k, v in model.get_base_model().state_dict().items()}
    result["base_untouched"] = all(
        torch.equal(base_now[k].cpu(), v.cpu()) for k, v in original.items())
    model.save_pretrained(out_dir, is_main_process=rank == 0)
    dist.barrier()
    if rank == 0:
        saved = load_file(os.path.join(out_dir, "adapter_model.safetensors"))
        result["saved"] = max_difference([saved[k] for k in sorted(saved)],
                                         [expected[k] for k in sorted(saved)])
        with open(os.path.join(out_dir, "result.json"), "w") as handle:
            json.dump(result, handle, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
