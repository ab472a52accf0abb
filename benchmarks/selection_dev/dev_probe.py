"""Dev only: run the paper's probe on a pair, save its scores and the weight deltas."""

import sys
import time

import torch

from neft.models import load_model
from neft.select import score_neurons
from neft.select.weights import by_module, logical_matrices

pair = sys.argv[1]
model, tok = load_model("smollm2-135m")
from neft.neurons import find_neuron_groups

groups = find_neuron_groups(model)
mods = list(by_module(groups))
before = {m: w.detach().float().clone() for m, w in logical_matrices(model, model, mods)}
t = time.time()
s = score_neurons(
    model,
    "probe",
    data=f"/work/shared/data/ddtp/translation/{pair}",
    tokenizer=tok,
    limit=4000,
    max_length=128,
    seed=1234,
    restore=False,
)
print("probe s", time.time() - t, s.metadata["scorer_settings"])
delta = {m: (w.detach().float() - before[m]) for m, w in logical_matrices(model, model, mods)}
torch.save({"scores": s.scores, "delta": delta, "before": before}, f"/tmp/sd/probe-{pair}.pt")
