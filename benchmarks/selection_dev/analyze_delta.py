import torch

from neft.models import load_model
from neft.neurons import find_neuron_groups
from neft.select.weights import by_module, neuron_vectors

model, tok = load_model("smollm2-135m")
groups = find_neuron_groups(model)
mods = by_module(groups)
P = torch.load("/tmp/sd/probe-en-fr.pt")
G = torch.load("/tmp/sd/grad-en-fr-24.pt")
n = 24
cols = {k: [] for k in ("score", "wn", "dn", "dperp", "grms", "gmeanabs", "drift", "kind")}
for m, ids in mods.items():
    for i in ids:
        g = groups[i]
        w = neuron_vectors(P["before"][m], g).double()
        d = neuron_vectors(P["delta"][m], g).double()
        mu = neuron_vectors(G["S"][m], g).double() / n
        s = neuron_vectors(G["Q"][m], g).double() / n
        wn = w.norm(dim=1)
        wh = w / wn[:, None]
        dperp = (d - (d * wh).sum(1, keepdim=True) * wh).norm(dim=1)
        cols["score"].append(P["scores"][i].double())
        cols["wn"].append(wn)
        cols["dn"].append(d.norm(dim=1))
        cols["dperp"].append(dperp)
        cols["grms"].append(s.mean(1).sqrt())
        cols["gmeanabs"].append(mu.abs().mean(1))
        cols["drift"].append((mu * mu / s.clamp_min(1e-30) - 1 / n).sum(1))
        cols["kind"].append(torch.full((g.count,), 0 if g.axis == "rows" else 1))
C = {k: torch.cat(v).double() for k, v in cols.items()}


def rank(x):
    return x.argsort().argsort().double()


def sp(a, b):
    ra, rb = rank(a), rank(b)
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()


for kind in (0, 1):
    sel = C["kind"] == kind
    print(
        "kind",
        kind,
        {
            k: round(sp(C["score"][sel], C[k][sel]), 3)
            for k in ("wn", "dn", "dperp", "grms", "gmeanabs", "drift")
        },
    )
    print(
        "  dn vs grms",
        round(sp(C["dn"][sel], C["grms"][sel]), 3),
        "dn vs drift",
        round(sp(C["dn"][sel], C["drift"][sel]), 3),
        "dn vs gmeanabs",
        round(sp(C["dn"][sel], C["gmeanabs"][sel]), 3),
    )
    print(
        "  quantiles dn",
        torch.quantile(C["dn"][sel], torch.tensor([0.05, 0.5, 0.95]).double()).tolist(),
        "grms",
        torch.quantile(C["grms"][sel], torch.tensor([0.05, 0.5, 0.95]).double()).tolist(),
    )
# elementwise: relation of |delta| to grad scale for one module
m = list(mods)[10]
d = P["delta"][m].abs().flatten()
s = (G["Q"][m] / n).sqrt().flatten()
print(m, "elem spearman |d| vs grad rms", round(sp(d[:200000].double(), s[:200000].double()), 3))
qs = torch.quantile(s[:200000], torch.tensor([0.01, 0.1, 0.5, 0.9])).tolist()
print("grad rms quantiles", qs, "lr*200/2=", 2e-5 * 100)
print("mean |d| per grad-rms decile:")
order = s[:200000].argsort()
dd = d[:200000][order]
for q in range(10):
    print(q, dd[q * 20000 : (q + 1) * 20000].mean().item())
