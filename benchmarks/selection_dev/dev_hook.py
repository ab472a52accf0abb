"""Dev: Adam in the backward hook (candidate matrices only, no clipping) vs the K=200 probe."""

import sys
import time

import torch

from neft.models import load_model
from neft.neurons import count_parameters, find_neuron_groups
from neft.select.budget import resolve_budget
from neft.select.datadriven import batches, prepare_examples
from neft.select.weights import by_module, cosine, logical_matrices, neuron_vectors

pair, K, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
bs = int(sys.argv[4]) if len(sys.argv) > 4 else 4
model, tok = load_model("smollm2-135m")
groups = find_neuron_groups(model)
mods = by_module(groups)
total = count_parameters(model)
ex = prepare_examples(f"/work/shared/data/ddtp/translation/{pair}", tok, "translation", 128, 4000)
before = {m: w.detach().float().clone() for m, w in logical_matrices(model, model, list(mods))}
layers = dict(model.named_modules())
for p in model.parameters():
    p.requires_grad_(False)
opts = {}


def hook(p):
    opts[p].step()
    p.grad = None


for m in mods:
    w = layers[m].weight
    w.requires_grad_(True)
    opts[w] = torch.optim.AdamW(
        [w],
        lr=lr,
        betas=(float(sys.argv[5]) if len(sys.argv) > 5 else 0.9, 0.999),
        weight_decay=0.0,
    )
    w.register_post_accumulate_grad_hook(hook)
stream = batches(ex, bs, 1234, tok.pad_token_id, torch.device("cpu"))
model.train()
t = time.time()
snap = {}
torch.manual_seed(1234)
for step in range(1, K + 1):
    loss = model(**next(stream)).loss
    loss.backward()
    if step in (5, 10, 15, 20, 25, 30, 40):
        snap[step] = {
            m: w.detach().float().clone() for m, w in logical_matrices(model, model, list(mods))
        }
print("time", round(time.time() - t, 1), "loss", loss.item(), flush=True)
P = torch.load(f"/tmp/sd/probe-{pair}.pt")


def top(scores, pct):
    k = resolve_budget(groups, total, percent=pct).neurons
    return set(torch.cat(scores).topk(k).indices.tolist())


ref = {p: top(P["scores"], p) for p in (3, 6, 9)}


def ov(scores):
    return [round(len(top(scores, p) & ref[p]) / len(ref[p]), 3) for p in (3, 6, 9)]


for step, after in snap.items():
    sc = [torch.empty(0)] * len(groups)
    for m, idx in mods.items():
        for i in idx:
            sc[i] = 1 - cosine(
                neuron_vectors(before[m], groups[i]), neuron_vectors(after[m], groups[i])
            )
    print(
        "hook lr",
        lr,
        "bs",
        bs,
        "argv",
        sys.argv[4:],
        "step",
        step,
        "overlap 3/6/9",
        ov(sc),
        flush=True,
    )
