"""Dev only: overlap of candidate gradient-scorer formulas with the probe's selection."""

import sys

import torch

from neft.models import load_model
from neft.neurons import count_parameters, find_neuron_groups
from neft.select.budget import resolve_budget
from neft.select.weights import by_module, logical_matrices, neuron_vectors

pair, n = sys.argv[1], int(sys.argv[2])
model, tok = load_model("smollm2-135m")
groups = find_neuron_groups(model)
mods = by_module(groups)
W = dict(logical_matrices(model, model, list(mods)))
P = torch.load(f"/tmp/sd/probe-{pair}.pt")
G = torch.load(f"/tmp/sd/grad-{pair}-{n}.pt")
total = count_parameters(model)


def top(scores, pct):
    k = resolve_budget(groups, total, percent=pct).neurons
    flat = torch.cat([s.double() for s in scores])
    idx = flat.topk(k).indices
    return set(idx.tolist())


probe = P["scores"]


def vec(t, i):
    return neuron_vectors(t, groups[i]).double()


def formula(A, per_element=True, perp=True, noise_d=True):
    out = [None] * len(groups)
    for m, ids in mods.items():
        S, Q = G["S"][m], G["Q"][m]
        for i in ids:
            mu = vec(S, i) / n
            s = vec(Q, i) / n
            w = vec(W[m], i)
            if per_element:
                r2 = mu * mu / s.clamp_min(1e-30) - 1.0 / n  # bias-corrected r^2 per element
                r = mu / s.clamp_min(1e-30).sqrt()
                if perp:
                    wh = w / w.norm(dim=1, keepdim=True)
                    par = (r * wh).sum(1)
                    drift = (r2.sum(1) - par**2).clamp_min(0)
                else:
                    drift = r2.sum(1).clamp_min(0)
            else:
                d = w.shape[1]
                drift = d * ((mu**2).sum(1) / s.sum(1) - 1.0 / n).clamp_min(0)
            d = w.shape[1]
            out[i] = (A * drift + (d if noise_d else 0)) / w.pow(2).sum(1)
    return out


for pct in (3, 6, 9):
    ref = top(probe, pct)
    res = {}
    mag = [1 / vec(W[m], i).norm(dim=1) for m, ids in mods.items() for i in ids]
    # order of groups for mag must match groups order
    mag2 = [None] * len(groups)
    for m, ids in mods.items():
        for i in ids:
            mag2[i] = 1 / vec(W[m], i).norm(dim=1)
    res["magnitude"] = len(top(mag2, pct) & ref) / len(ref)
    for A in (1, 3, 10, 30, 100, 300, 1000):
        res[f"elem A={A}"] = len(top(formula(A), pct) & ref) / len(ref)
    for A in (3, 30):
        res[f"neuron A={A}"] = len(top(formula(A, per_element=False), pct) & ref) / len(ref)
        res[f"elem noperp A={A}"] = len(top(formula(A, perp=False), pct) & ref) / len(ref)
    print(pct, {k: round(v, 3) for k, v in res.items()}, flush=True)
