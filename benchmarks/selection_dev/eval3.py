import sys

import torch

from neft.models import load_model
from neft.neurons import count_parameters, find_neuron_groups
from neft.select.budget import resolve_budget
from neft.select.weights import neuron_vectors

pair, tag, n, B = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model, tok = load_model("smollm2-135m")
groups = find_neuron_groups(model)
total = count_parameters(model)
P = torch.load(f"/tmp/sd/probe-{pair}.pt")
G = torch.load(f"/tmp/sd/{tag}-{pair}-{n}.pt")
N = n * B
feat = {"wn": [], "drift": [], "perp": []}
for i, g in enumerate(groups):
    m = g.module
    w = neuron_vectors(P["before"][m], g).double()
    wn = w.norm(dim=1)
    wh = w / wn[:, None]
    mu = neuron_vectors(G["S"][m], g).double() / n
    sB = neuron_vectors(G["Q"][m], g).double() / n
    var1 = (B * (sB - mu * mu) * n / (n - 1)).clamp_min(0)  # per-example gradient variance
    s4 = (mu * mu + var1 / 4).clamp_min(1e-30)  # second moment at the probe's batch 4
    r2 = (mu * mu - var1 / N) / s4  # bias-corrected
    r = mu / s4.sqrt()
    feat["wn"].append(wn)
    feat["drift"].append(r2.sum(1))
    feat["perp"].append((r * wh).sum(1) ** 2)


def top(scores, pct):
    k = resolve_budget(groups, total, percent=pct).neurons
    return set(torch.cat(scores).topk(k).indices.tolist())


ref = {p: top(P["scores"], p) for p in (3, 6, 9)}


def ov(scores):
    return [round(len(top(scores, p) & ref[p]) / len(ref[p]), 3) for p in (3, 6, 9)]


for A in (1, 3, 10, 30, 100):
    for lam in (0.5, 1.0):
        sc = []
        for i, g in enumerate(groups):
            dr = feat["drift"][i] - feat["perp"][i]
            dr = dr.mean() + lam * (dr - dr.mean())
            sc.append(((A * dr + g.neuron_params).clamp_min(1e-9)).sqrt() / feat["wn"][i])
        print(f"N={N} A={A} lam={lam}", ov(sc), flush=True)
