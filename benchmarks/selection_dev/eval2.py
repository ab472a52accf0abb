import sys

import torch

from neft.models import load_model
from neft.neurons import count_parameters, find_neuron_groups
from neft.select.budget import resolve_budget
from neft.select.weights import by_module, neuron_vectors

pair, n = sys.argv[1], int(sys.argv[2])
model, tok = load_model("smollm2-135m")
groups = find_neuron_groups(model)
mods = by_module(groups)
total = count_parameters(model)
P = torch.load(f"/tmp/sd/probe-{pair}.pt")
G = torch.load(f"/tmp/sd/grad-{pair}-{n}.pt")
feat = {"wn": [], "drift": [], "perp": [], "dn": []}
for i, g in enumerate(groups):
    m = g.module
    w = neuron_vectors(P["before"][m], g).double()
    wn = w.norm(dim=1)
    wh = w / wn[:, None]
    mu = neuron_vectors(G["S"][m], g).double() / n
    s = neuron_vectors(G["Q"][m], g).double().div(n).clamp_min(1e-30)
    r = mu / s.sqrt()
    feat["wn"].append(wn)
    feat["drift"].append((r * r - 1 / n).sum(1))
    feat["perp"].append((r * wh).sum(1) ** 2)
    feat["dn"].append(neuron_vectors(P["delta"][m], g).double().norm(dim=1))


def top(scores, pct):
    k = resolve_budget(groups, total, percent=pct).neurons
    return set(torch.cat(scores).topk(k).indices.tolist())


ref = {p: top(P["scores"], p) for p in (3, 6, 9)}


def ov(scores):
    return [round(len(top(scores, p) & ref[p]) / len(ref[p]), 3) for p in (3, 6, 9)]


d_of = [g.neuron_params for g in groups]
# layer-level structure
layer_dn = [x.mean().item() for x in feat["dn"]]
print(
    "dn mean per group (first 10, last 10):",
    [round(v, 5) for v in layer_dn[:6]],
    [round(v, 5) for v in layer_dn[-6:]],
)
print("oracle: true dn / wn", ov([dn / wn for dn, wn in zip(feat["dn"], feat["wn"])]))
print("oracle layer-mean dn / wn", ov([dn.mean() / wn for dn, wn in zip(feat["dn"], feat["wn"])]))
for A in (1, 3, 10):
    for lam in (0.0, 0.25, 0.5, 1.0):
        sc = []
        for i, g in enumerate(groups):
            dr = feat["drift"][i] - feat["perp"][i]
            dr = dr.mean() + lam * (dr - dr.mean())
            sc.append(((A * dr + d_of[i]).clamp_min(1e-9)).sqrt() / feat["wn"][i])
        print(f"A={A} lam={lam}", ov(sc), flush=True)
