"""Dev: a short real AdamW run (candidate matrices only, or all weights) vs the K=200 probe."""

import sys
import time

import torch

from neft.models import load_model
from neft.neurons import count_parameters, find_neuron_groups
from neft.select.budget import resolve_budget
from neft.select.datadriven import batches, prepare_examples
from neft.select.weights import by_module, cosine, logical_matrices, neuron_vectors

pair, K, which = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lr = float(sys.argv[4]) if len(sys.argv) > 4 else 2e-5
torch.manual_seed(0)
model, tok = load_model("smollm2-135m")
groups = find_neuron_groups(model)
mods = by_module(groups)
total = count_parameters(model)
ex = prepare_examples(f"/work/shared/data/ddtp/translation/{pair}", tok, "translation", 128, 4000)
before = {m: w.detach().float().clone() for m, w in logical_matrices(model, model, list(mods))}
layers = dict(model.named_modules())
for p in model.parameters():
    p.requires_grad_(which == "all")
cand = [layers[m].weight for m in mods]
for w in cand:
    w.requires_grad_(True)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
stream = batches(ex, 4, 1234, tok.pad_token_id, torch.device("cpu"))
model.train()
t = time.time()
snap = {}
torch.manual_seed(1234)
for step in range(1, K + 1):
    loss = model(**next(stream)).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if step in (5, 10, 20, 30, 40, 60) and step <= K:
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
    print(which, "lr", lr, "step", step, "overlap 3/6/9", ov(sc), flush=True)
