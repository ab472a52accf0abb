"""Dev only: per-element gradient sums and squares over the probe's first batches."""

import sys
import time

import torch

from neft.models import load_model
from neft.neurons import find_neuron_groups
from neft.select.datadriven import batches, prepare_examples
from neft.select.weights import by_module

pair, n = sys.argv[1], int(sys.argv[2])
model, tok = load_model("smollm2-135m")
groups = find_neuron_groups(model)
mods = list(by_module(groups))
layers = dict(model.named_modules())
for p in model.parameters():
    p.requires_grad_(False)
S = {m: torch.zeros_like(layers[m].weight, dtype=torch.float32) for m in mods}
Q = {m: torch.zeros_like(layers[m].weight, dtype=torch.float32) for m in mods}
for m in mods:
    layers[m].weight.requires_grad_(True)
ex = prepare_examples(f"/work/shared/data/ddtp/translation/{pair}", tok, "translation", 128, 4000)
stream = batches(ex, 16, 1234, tok.pad_token_id, torch.device("cpu"))
model.train()
torch.manual_seed(1234)
t = time.time()
for i in range(n):
    model(**next(stream)).loss.backward()
    for m in mods:
        g = layers[m].weight.grad
        S[m] += g
        Q[m] += g * g
        layers[m].weight.grad = None
    if i + 1 in (6, 12, 16):
        torch.save({"n": i + 1, "S": S, "Q": Q}, f"/tmp/sd/grad16-{pair}-{i + 1}.pt")
        print(i + 1, time.time() - t, flush=True)
