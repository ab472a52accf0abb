"""Evidence that decides: test loss and drift equal direct computations, the general-text
sets are deterministic, fronts and verdicts read the right numbers, bad input is refused."""

from __future__ import annotations

import copy
import gzip
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from neft.cli import main as cli_main
from neft.compare import build_plan, compare
from neft.config import from_dict
from neft.data import build_dataset, load_records
from neft.data.sources import (
    description_paragraphs,
    harvest_general_text,
    load_drift_sets,
    roff_to_text,
)
from neft.errors import NeftError
from neft.evaluate import evaluate_model
from neft.evaluate.likelihood import drift, target_loss, text_windows
from neft.experiments.compare.front import read_points
from neft.experiments.compare.plan import CompareConfig, _cell_name
from neft.experiments.compare.verdicts import drift_at, envelope, loss_at

TEXTS = ["the red file is open and shared with the remote host",
         "a new hidden file", "the old local large empty file is now open",
         "red blue old new small large empty open shared local remote hidden " * 3]


def tiny_pair(tiny_model_dir: str):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return tokenizer, base, tuned


def direct_kl(model, base, ids: list[int]) -> tuple[float, float, float]:
    """KL sum, base NLL sum, tuned NLL sum of one unpadded window."""
    x = torch.tensor([ids])
    with torch.no_grad():
        lt = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        lb = torch.log_softmax(base(input_ids=x).logits[0, :-1].double(), -1)
    target = x[0, 1:]
    kl = (lb.exp() * (lb - lt)).sum().item()
    return kl, -lb[range(len(target)), target].sum().item(), \
        -lt[range(len(target)), target].sum().item()


def test_target_loss_equals_the_mean_nll_of_each_reference(tiny_model_dir, toy_data_dir):
    tokenizer, _, model = tiny_pair(tiny_model_dir)
    records = load_records(toy_data_dir, split="test", task="translation")
    result = target_loss(model, tokenizer, records, max_length=64, batch_size=3)
    dataset = build_dataset(records, tokenizer, "translation", max_length=64)
    total_nll, total_tokens = 0.0, 0
    for i, example in enumerate(dataset.examples):
        ids = torch.tensor([example["input_ids"]])
        labels = torch.tensor([example["labels"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        nll = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                              reduction="sum").item()
        tokens = int((labels[0, 1:] != -100).sum())
        assert result["nll"][i] == pytest.approx(nll, rel=1e-5)
        assert result["token_counts"][i] == tokens
        total_nll += nll
        total_tokens += tokens
    assert result["tokens"] == total_tokens
    assert result["loss"] == pytest.approx(total_nll / total_tokens, rel=1e-5)


def test_drift_of_the_base_against_itself_is_zero(tiny_model_dir):
    tokenizer, base, _ = tiny_pair(tiny_model_dir)
    same = copy.deepcopy(base)
    result = drift(same, base, tokenizer, TEXTS, max_length=16, batch_size=3)
    assert result["kl"] == pytest.approx(0.0, abs=1e-6)
    assert result["loss_change"] == pytest.approx(0.0, abs=1e-6)
    assert result["tokens"] == sum(len(ids) - 1 for _, ids in text_windows(tokenizer, TEXTS, 16))


def test_drift_equals_a_direct_kl_per_window(tiny_model_dir):
    tokenizer, base, tuned = tiny_pair(tiny_model_dir)
    result = drift(tuned, base, tokenizer, TEXTS, max_length=16, batch_size=2)
    sums = [[0.0, 0.0, 0.0] for _ in TEXTS]
    for index, ids in text_windows(tokenizer, TEXTS, 16):
        for k, value in enumerate(direct_kl(tuned, base, ids)):
            sums[index][k] += value
    for i, (kl, nll_base, nll_tuned) in enumerate(sums):
        assert result["kl_sums"][i] == pytest.approx(kl, rel=1e-4, abs=1e-6)
        assert result["nll_base"][i] == pytest.approx(nll_base, rel=1e-5)
        assert result["nll_tuned"][i] == pytest.approx(nll_tuned, rel=1e-5)
    assert result["kl"] > 0
    assert result["loss_change"] == pytest.approx(
        (sum(s[2] for s in sums) - sum(s[1] for s in sums)) / result["tokens"], rel=1e-4)


def test_bf16_loss_and_drift_stay_close_to_fp32(tiny_model_dir, toy_data_dir):
    """The grids run in bf16: the same numbers, within bf16's rounding."""
    tokenizer, base, tuned = tiny_pair(tiny_model_dir)
    records = load_records(toy_data_dir, split="test", task="translation")
    for bf16 in (False, True):
        loss = target_loss(tuned, tokenizer, records, max_length=64, batch_size=3, bf16=bf16)
        moved = drift(tuned, base, tokenizer, TEXTS, max_length=16, batch_size=2, bf16=bf16)
        if not bf16:
            reference = loss, moved
    assert loss["loss"] != reference[0]["loss"]  # bf16 did run
    assert loss["loss"] == pytest.approx(reference[0]["loss"], rel=2e-2)
    assert loss["token_counts"] == reference[0]["token_counts"]
    assert moved["kl"] == pytest.approx(reference[1]["kl"], rel=5e-2)
    assert moved["loss_base"] == pytest.approx(reference[1]["loss_base"], rel=2e-2)
    assert all(p.dtype == torch.float32 for p in tuned.parameters())  # autocast, no cast


def test_long_texts_are_cut_into_windows(tiny_model_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    windows = text_windows(tokenizer, [TEXTS[3]], 8)
    assert len(windows) > 1 and all(len(ids) <= 8 for _, ids in windows)
    assert sum(len(ids) for _, ids in windows) == len(tokenizer(TEXTS[3])["input_ids"])


def test_evaluate_loss_and_drift_without_generating(tiny_model_dir, toy_data_dir):
    tokenizer, base, tuned = tiny_pair(tiny_model_dir)
    records = load_records(toy_data_dir, split="test", task="translation")
    result = evaluate_model(tuned, tokenizer, records, metrics="loss,drift", max_length=64,
                            base_model=base, drift_sets={"toy": TEXTS}, progress=False)
    assert "generation" not in result
    assert set(result["scores"]) == {"loss", "drift_toy", "loss_change_toy"}
    samples = result["samples"]
    assert all("hypothesis" not in s and s["loss_tokens"] > 0 for s in samples)
    weighted = sum(s["loss"] * s["loss_tokens"] for s in samples) / sum(
        s["loss_tokens"] for s in samples)
    assert weighted == pytest.approx(result["scores"]["loss"], rel=1e-6)
    assert result["drift"]["toy"]["fingerprint"]
    with pytest.raises(NeftError, match="needs the base model"):
        evaluate_model(tuned, tokenizer, records, metrics="drift", progress=False)


# ----------------------------------------------------------------------------- general text

PAGE = r""".TH DEMO 1
.SH NAME
demo \- a demo
.SH DESCRIPTION
.B demo
reads the \fIinput\fR file and writes a copy of it to the output, keeping every line as it
was written, so that nothing \(em not even a space \- is lost on the way.
.TP
\fB\-a\fR
all
.PP
This paragraph is the second one of the description and it has enough words to count as
prose for the general text set of manual pages.
.SH OPTIONS
Options are not part of the description and are never taken into the general set at all.
"""


def make_text_dirs(tmp_path):
    man = tmp_path / "man" / "man1"
    man.mkdir(parents=True)
    with gzip.open(man / "demo.1.gz", "wt") as handle:
        handle.write(PAGE)
    with gzip.open(man / "gcloud-thing.1.gz", "wt") as handle:
        handle.write(PAGE.replace("demo", "cloud"))
    licenses = tmp_path / "licenses"
    licenses.mkdir()
    text = ("Everyone is permitted to copy and distribute verbatim copies of this license "
            "document, but changing it is not allowed.\n\n"
            "The licenses for most software are designed to take away your freedom to share "
            "and change it.\n\nShort.\n")
    (licenses / "GPL-3").write_text(text)
    os.symlink(licenses / "GPL-3", licenses / "GPL")
    return str(tmp_path / "man"), str(licenses)


def test_description_paragraphs_are_plain_text():
    paragraphs = description_paragraphs(PAGE)
    assert paragraphs[0].startswith("demo reads the input file and writes a copy")
    assert "—" in paragraphs[0] and "\\" not in " ".join(paragraphs)
    assert not any("Options are not part" in p for p in paragraphs)
    assert roff_to_text(r"\fBbold\fR and \-\-long") == "bold and --long"


def test_general_sets_are_deterministic_and_leave_out_machine_pages(tmp_path):
    man, licenses = make_text_dirs(tmp_path)
    pages = harvest_general_text("manpages", man_dir=man)
    assert [r["origin"] for r in pages] == ["demo.1", "demo.1"]  # not gcloud's, not -a's
    assert pages == harvest_general_text("manpages", man_dir=man)
    texts = harvest_general_text("licenses", license_dir=licenses)
    assert len(texts) == 2 and {r["origin"] for r in texts} == {"GPL-3"}  # symlink read once
    assert len(harvest_general_text("licenses", max_words=5, license_dir=licenses)) == 1


def test_neft_data_general_writes_sets_and_never_replaces_others(tmp_path, capsys):
    man, licenses = make_text_dirs(tmp_path)
    out = tmp_path / "general"
    argv = ["data", "general", "--output_dir", str(out), "--man_dir", man,
            "--license_dir", licenses]
    assert cli_main(argv) == 0
    sets = load_drift_sets(str(out))
    assert set(sets) == {"manpages", "licenses"} and all(sets.values())
    assert cli_main(argv) == 0  # the same harvest again: harmless
    assert cli_main([*argv, "--max_words", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--sets", "novels"]) == 2


def test_bad_drift_data_is_one_line(tmp_path):
    with pytest.raises(NeftError, match="does not exist"):
        load_drift_sets(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeftError, match="no .jsonl"):
        load_drift_sets(str(tmp_path / "empty"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(NeftError, match="text"):
        load_drift_sets(str(tmp_path / "bad.jsonl"))
    (tmp_path / "blank.jsonl").write_text("")
    with pytest.raises(NeftError, match="no records"):
        load_drift_sets(str(tmp_path / "blank.jsonl"))


def test_eval_cli_refuses_drift_without_a_base_and_loss_without_references(
        tiny_model_dir, toy_data_dir, tmp_path, capsys):
    drift_file = tmp_path / "toy.jsonl"
    drift_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    output = tmp_path / "eval.json"
    code = cli_main(["eval", "--model", tiny_model_dir, "--data", toy_data_dir, "--metrics",
                     "drift", "--drift_data", str(drift_file), "--output_file", str(output)])
    assert code == 2 and not output.exists()
    assert "--base_model" in capsys.readouterr().err
    no_refs = tmp_path / "no-refs.jsonl"
    no_refs.write_text(json.dumps({"source": "the red file"}) + "\n")
    assert cli_main(["eval", "--model", tiny_model_dir, "--data", str(no_refs),
                     "--metrics", "loss"]) == 2
    assert "target" in capsys.readouterr().err
    code = cli_main(["eval", "--model", tiny_model_dir, "--base_model", tiny_model_dir,
                     "--data", toy_data_dir, "--metrics", "loss,drift", "--drift_data",
                     str(drift_file), "--max_length", "64", "--output_file", str(output)])
    assert code == 0
    written = json.loads(output.read_text())
    assert written["scores"]["drift_toy"] == pytest.approx(0.0, abs=1e-6)
    assert written["samples"][0]["loss_tokens"] > 0


# ----------------------------------------------------------------------------- fronts


def test_envelope_and_interpolation():
    xs = np.array([0.0, 0.1, 0.2, 0.15, 0.4])
    ys = np.array([3.0, 2.5, 2.0, 2.6, 2.1])  # (0.15, 2.6) and (0.4, 2.1) are dominated
    front = envelope(xs, ys)
    assert front[0].tolist() == [0.0, 0.1, 0.2] and front[1].tolist() == [3.0, 2.5, 2.0]
    assert loss_at(front, 0.05) == pytest.approx(2.75)
    assert loss_at(front, 1.0) == 2.0  # flat past the last point
    assert drift_at(front, 2.25) == pytest.approx(0.15)
    assert drift_at(front, 3.5) == 0.0
    assert math.isnan(drift_at(front, 1.9))  # never reached


def test_a_front_that_never_reaches_the_loss_gives_a_verdict_and_strict_json():
    from neft.experiments.compare.verdicts import Fronts

    fronts = Fronts.__new__(Fronts)
    fronts.name = "toy"
    fronts.base = None
    samples = 5
    loss = np.full(samples, 2.0)
    fronts.cells = {
        "a": {"xs": np.array([[0.0] * samples, [0.1] * samples]),
              "ys": np.array([[3.0] * samples, loss]),
              "standard": {"loss": loss, "drift": np.full(samples, 0.1), "loss_std": None,
                           "drift_std": None, "seed_points": [(0.1, 2.0)], "n": 1}},
        "b": {"xs": np.array([[0.0] * samples, [0.05] * samples]),
              "ys": np.array([[3.0] * samples, [2.5] * samples]),  # never as low as 2.0
              "standard": {"loss_std": None, "drift_std": None,
                           "seed_points": [(0.05, 2.5)]}}}
    rows = fronts.compare("a", "b")
    reached = next(r for r in rows if r["measure"] == "drift at matched loss")
    assert reached["delta"] is None and reached["verdict"].startswith("better")
    json.dumps(rows, allow_nan=False)  # compare.json stays strict JSON


def front_grid(tiny_model_dir, toy_data_dir, tmp_path, **options) -> dict:
    drift_file = tmp_path / "toy.jsonl"
    drift_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    values = dict(
        output_dir=str(tmp_path / "out"), model=tiny_model_dir, data=toy_data_dir,
        max_dev_samples=4, max_test_samples=4, seeds=[1, 2, 3], isolate=False,
        include_base=True,
        train=dict(max_steps=4, eval_steps=2, logging_steps=1, per_device_train_batch_size=4,
                   per_device_eval_batch_size=4, max_length=64,
                   scorer="magnitude"),  # NeFT's cells: not the default, random's neurons
        eval=dict(max_new_tokens=4, batch_size=4),
        front=dict(steps=[2, 4], drift_data=str(drift_file)),
        methods=[{"method": "neft", "num_neurons": 6, "learning_rates": [1e-2, 3e-2, 1e-1]},
                 {"method": "lora", "lora_r": 2, "learning_rates": [1e-3, 1e-2, 3e-2]},
                 {"method": "full", "learning_rate": 1e-3, "seeds": [1]}])
    values.update(options)
    return values


def test_first_runs_gives_each_cell_a_point_and_leaves_the_rest(tiny_model_dir, toy_data_dir,
                                                                tmp_path):
    """first_runs: the base and each cell's first seed at its seeded rate, no generation;
    the rest of the plan stays (shown as later) and a rerun without it runs only that."""
    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path)  # generate: best
    firsts = ["cells/base", "cells/neft-6n-lr0.03-s1", "cells/lora-r2-lr0.01-s1",
              "cells/full-s1"]
    planned = compare({**values, "first_runs": True, "dry_run": True})["states"]
    assert planned["pending"] == firsts
    assert len(planned["later"]) == 2 * 2 + 2 * 2  # the fronts' other rates, seeds 2 and 3
    assert compare({**values, "first_runs": True})["ran"] == firsts
    assert not (tmp_path / "out" / "best").exists()  # a first run is not yet a cell's best
    rest = compare({**values, "dry_run": True})["states"]
    assert rest["done"] == firsts and not rest["later"] and len(rest["pending"]) == 8


def test_compare_refuses_data_it_would_read_as_every_split(tiny_model_dir, toy_data_dir,
                                                            tmp_path):
    """One file would be train, dev and test alike; a missing confirm split names the
    setting that asks for it. Both before any folder is made."""
    import shutil

    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path, test_split="dev")
    values["front"]["confirm_split"] = "test"
    with pytest.raises(NeftError, match="is one file, which would serve as train, dev and test"):
        compare({**values, "data": os.path.join(toy_data_dir, "train.jsonl"), "dry_run": True})
    no_test = tmp_path / "no-test"
    no_test.mkdir()
    for split in ("train", "dev"):
        shutil.copy(os.path.join(toy_data_dir, f"{split}.jsonl"), no_test)
    with pytest.raises(NeftError, match="no test.jsonl .*it is front.confirm_split"):
        compare({**values, "data": str(no_test)})
    assert not (tmp_path / "out").exists()


def test_first_runs_recomputes_only_the_runs_it_runs(tiny_model_dir, toy_data_dir, tmp_path):
    """--first_runs --recompute_changed clears and reruns the first runs whose settings
    changed; a changed later run keeps its files until a run that runs it."""
    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path, seeds=[1], include_base=False,
                        methods=[{"method": "lora", "lora_r": 2, "learning_rates": [1e-3, 1e-2],
                                  "learning_rate": 1e-3}])
    compare(values)
    later = tmp_path / "out" / "cells" / "lora-r2-lr0.01-s1" / "result.json"
    before = later.read_bytes()
    values["train"] = {**values["train"], "max_length": 48}
    outcome = compare({**values, "first_runs": True, "recompute_changed": True})
    assert outcome["ran"] == ["cells/lora-r2-lr0.001-s1"]
    assert later.read_bytes() == before
    assert "cells/lora-r2-lr0.01-s1" in compare({**values, "dry_run": True})["states"]["changed"]


def test_a_best_run_overtaken_by_a_new_rate_is_generated_again(tiny_model_dir, toy_data_dir,
                                                                 tmp_path):
    """Generation scores each cell's best-dev-loss run; when a rate added later wins, the
    old generation is stale and is redone, not reported as done earlier."""
    from neft.experiments.compare.results import best_run, current

    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path, seeds=[1],
                        methods=[{"method": "lora", "lora_r": 2, "learning_rates": [1e-4]}])
    compare(values)
    values["methods"][0]["learning_rates"] = [1e-4, 3e-2]
    values["methods"][0]["learning_rate"] = 1e-4  # the seeded rate, as before
    outcome = compare(values)
    plan = build_plan(from_dict(CompareConfig, values))
    best = best_run(plan, "lora-r2")
    assert best.spec["of"] == "cells/lora-r2-lr0.03-s1"  # the new rate won
    assert best.folder in outcome["ran"] and current(plan, best) is not None


def test_front_grid_records_points_generates_best_runs_and_gives_verdicts(
        tiny_model_dir, toy_data_dir, tmp_path):
    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path)
    values["methods"][1]["learning_rate"] = 3e-2  # LoRA's seeds at its top rate
    outcome = compare(values)
    assert not outcome["failed"]
    root = tmp_path / "out"
    # first seed at every rate, the other seeds at the middle rate (or the one named)
    assert {p.name for p in (root / "cells").iterdir()} >= {
        "base", "neft-6n-lr0.01-s1", "neft-6n-lr0.03-s1", "neft-6n-lr0.1-s1",
        "neft-6n-lr0.03-s2", "neft-6n-lr0.03-s3", "lora-r2-lr0.03-s2", "full-s1"}
    points = json.loads((root / "cells/neft-6n-lr0.03-s2/points.json").read_text())
    assert [p["step"] for p in points] == [2, 4]
    assert len(points[0]["test"]["nll"]) == 4 and "kl_sums" in points[0]["drift"]["toy"]
    report = json.loads((root / "compare.json").read_text())
    fronts = report["fronts"]
    assert fronts["base"]["test_loss"] > 0
    standard = fronts["cells"]["neft-6n"]["toy"]["standard"]
    assert standard["learning_rate"] == 3e-2 and standard["seeds"] == [1, 2, 3]
    # the standard point is the mean of the middle rate's last points over seeds
    finals = [json.loads((root / f"cells/neft-6n-lr0.03-s{s}/points.json").read_text())[-1]
              for s in (1, 2, 3)]
    assert standard["test_loss"] == pytest.approx(np.mean([p["test_loss"] for p in finals]))
    # the cells table aggregates the same runs: the middle rate, one run a seed
    row = next(r for r in report["cells"] if r["cell"] == "neft-6n")
    assert row["learning_rate"] == 3e-2
    lora = fronts["cells"]["lora-r2"]["toy"]["standard"]
    assert lora["learning_rate"] == 3e-2 and lora["seeds"] == [1, 2, 3]
    assert next(r for r in report["cells"] if r["cell"] == "lora-r2")["learning_rate"] == 3e-2
    assert row["dev_loss"]["per_seed"] == {
        str(s): json.loads((root / f"cells/neft-6n-lr0.03-s{s}/result.json").read_text())[
            "dev_loss"] for s in (1, 2, 3)}
    measures = {(r["other"], r["measure"]) for r in fronts["verdicts"]}
    assert ("lora-r2", "loss at matched drift") in measures
    assert ("full", "drift at matched loss") in measures
    assert ("lora-r2", "chrf") in measures
    for row in fronts["verdicts"]:
        assert row["verdict"].startswith(("better", "worse", "not resolved"))
    # each cell's generation run is its lowest-dev-loss run
    for cell in ("neft-6n", "lora-r2", "full"):
        result = json.loads((root / f"best/{cell}/result.json").read_text())
        losses = {f"cells/{p.parent.name}": json.loads(p.read_text())["dev_loss"]
                  for p in (root / "cells").glob(f"{cell}-*/result.json")}
        assert result["of"] == min(losses, key=losses.get)
        assert result["scores"]["chrf"] is not None
    text = (root / "compare.md").read_text()
    assert "## Fronts: test loss against drift" in text and "### Verdicts" in text
    assert (root / "compare-front.png").stat().st_size > 0
    # a rerun computes nothing
    assert not compare(values)["ran"]


def test_a_fronts_only_grid_generates_nothing(tiny_model_dir, toy_data_dir, tmp_path):
    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path, test_split="dev", seeds=[1])
    values["front"]["generate"] = "none"
    values["methods"] = [{"method": "neft", "num_neurons": 6, "learning_rates": [1e-2, 3e-2]},
                         {"method": "random", "num_neurons": 6, "learning_rates": [1e-2, 3e-2]}]
    assert not compare(values)["failed"]
    root = tmp_path / "out"
    assert not (root / "best").exists()
    assert not any((root / "cells").glob("*/eval.json"))
    assert json.loads((root / "cells/base/points.json").read_text())[0]["step"] == 0
    report = json.loads((root / "compare.json").read_text())
    measures = {r["measure"] for r in report["fronts"]["verdicts"]}
    assert measures == {"loss at matched drift", "drift at matched loss"}
    assert "test split `dev`" in (root / "compare.md").read_text()
    assert not (root / "compare.png").exists() and (root / "compare-front.png").exists()
    with pytest.raises(NeftError, match="no loss on the 'test' split"):
        read_points(str(root / "cells/base"), "test")
    with pytest.raises(NeftError, match="confirm_split must name a split other than"):
        build_plan(from_dict(CompareConfig, {**values, "front": {**values["front"],
                                                                 "confirm_split": "dev"}}))


def load_benchmark(name: str):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_grids_records_resume_it_elsewhere_and_give_the_same_verdicts(
        tiny_model_dir, toy_data_dir, tmp_path, monkeypatch, capsys):
    """The records grid_records.py commits (no adapters) are enough to skip every run on
    another machine and to read the same verdicts, against any cell as reference, on the
    screen's split or on its confirm split."""
    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path, test_split="dev", seeds=[1],
                        reference="random-6n")
    values["front"].update(generate="none", confirm_split="test")
    values["methods"] = [{"method": "neft", "num_neurons": 6, "learning_rates": [1e-2, 3e-2]},
                         {"method": "random", "num_neurons": 6, "learning_rates": [1e-2, 3e-2]}]
    assert not compare(values)["failed"]
    records = tmp_path / "records"
    (records / "old-file").parent.mkdir()
    (records / "old-file").write_text("replaced whole")
    keeper = load_benchmark("grid_records")
    assert keeper.copy_records(str(tmp_path / "out"), str(records)) == 5
    with pytest.raises(SystemExit, match="inside the grid"):
        keeper.copy_records(str(tmp_path / "out"), str(tmp_path / "out/records"))
    kept = {p.name for p in records.rglob("*") if p.is_file()}
    assert kept == {"compare.json", "compare.md", "result.json", "points.json", "job.json"}
    study = load_benchmark("selection_study")
    original = study.against_reference(str(tmp_path / "out"))
    copied = study.against_reference(str(records))
    assert copied["done"] == copied["planned"] == 5 and copied["rows"] == original["rows"]
    flipped = study.against_reference(str(records), "neft-6n")
    assert {r["reference"] for r in flipped["rows"]} == {"random-6n"}
    with pytest.raises(NeftError, match="not a cell"):
        study.against_reference(str(records), "lora-r8")
    # every point, the base's too, holds the confirm split's loss of a direct computation
    base = json.loads((records / "cells/base/points.json").read_text())[0]
    assert base["confirm"]["split"] == "test" and len(base["confirm"]["test"]["nll"]) == 4
    tokenizer, model, _ = tiny_pair(tiny_model_dir)
    direct = target_loss(model, tokenizer, load_records(toy_data_dir, split="test", limit=4,
                                                        task="translation"), max_length=64)
    assert base["confirm"]["test_loss"] == pytest.approx(direct["loss"], rel=1e-5)
    confirmed = study.against_reference(str(records), confirm=True)
    assert confirmed["split"] == "test" and confirmed["rows"]
    assert confirmed["rows"][0]["delta"] != copied["rows"][0]["delta"]
    result = json.loads((records / "cells/neft-6n-lr0.01-s1/result.json").read_text())
    assert all("confirm_loss" in p for p in result["points"])
    restored = tmp_path / "restored"
    partial = restored / "cells/neft-6n-lr0.01-s1"  # unfinished here, finished in the records
    partial.mkdir(parents=True)
    (partial / "points.json").write_text("[]")
    assert keeper.restore_records(str(records), str(restored)) == 5
    assert json.loads((partial / "points.json").read_text())
    assert keeper.restore_records(str(records), str(restored)) == 0
    assert not compare({**values, "output_dir": str(restored)})["ran"]
    # a grid run for some cells counts those cells' runs in its progress
    assert not compare({**values, "cells": "random-6n"})["ran"]
    staged = study.against_reference(str(tmp_path / "out"))
    assert staged["done"] == staged["planned"] == 3 and staged["rows"] == original["rows"]
    # the pages land in the grid's folder, and are replaced only with --overwrite
    monkeypatch.setattr("sys.argv", ["selection_study.py", str(records)])
    study.main()
    assert "Each point scores 4 records only" in (records / "selection_study.md").read_text()
    for argv, message in (([str(records)], "selection_study.md already exists; pass --overw"),
                          ([str(tmp_path)], "has no compare.json: pass a neft compare outpu")):
        monkeypatch.setattr("sys.argv", ["selection_study.py", *argv])
        with pytest.raises(SystemExit) as stopped:
            study.main()
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["selection_study.py", str(records), "--overwrite"])
    study.main()
    # a run that failed at its last attempt is named, not taken for one still running
    run_dir = records / "cells/neft-6n-lr0.01-s1"
    kept = (run_dir / "result.json").read_text()
    (run_dir / "result.json").unlink()
    (run_dir / "failed.txt").write_text("exit status 2: boom\n")
    half = study.against_reference(str(records))
    assert half["failed"] == ["cells/neft-6n-lr0.01-s1"] and half["done"] == 4
    (run_dir / "result.json").write_text(kept)
    (run_dir / "failed.txt").unlink()
    # other drift texts than the runs measured (another machine's): not read, and said why
    with open(tmp_path / "toy.jsonl", "a") as handle:
        handle.write(json.dumps({"text": "Another general text, harvested elsewhere."}) + "\n")
    moved = study.against_reference(str(records))
    assert moved["done"] == 1 and moved["changed"] == 4  # the base measures no drift
    assert moved["first_change"].startswith("front.drift_sets.toy: ")
    study.main()
    assert "4 finished runs were made with other settings" in (
        records / "selection_study.md").read_text()


@pytest.mark.parametrize("change, message", [
    ({"reference": "nope"}, "not a cell"),
    ({"front": None}, "learning_rates traces a front"),
    ({"front": {"steps": [3]}}, "multiple of train.eval_steps"),
    ({"front": {"steps": [6]}}, "past train.max_steps"),
    ({"methods": [{"method": "neft", "num_neurons": 6, "learning_rates": [1e-2, 3e-2],
                   "eval_steps": 3}]}, r"methods\[0\] \(neft-6n\)\.eval_steps"),
    ({"front": {"generate": "some"}}, "front.generate"),
    ({"front": {"stepz": [2]}}, "did you mean 'steps'"),
    ({"methods": [{"method": "neft", "num_neurons": 6, "learning_rates": [1e-2, 3e-2],
                   "learning_rate": 5e-2}]}, "must be one of learning_rates"),
])
def test_bad_front_configs_fail_before_any_run(tiny_model_dir, toy_data_dir, tmp_path, change,
                                               message):
    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path)
    for key, value in change.items():
        if key == "front" and value is not None:
            value = {"drift_data": values["front"]["drift_data"], **value}
        values[key] = value
    with pytest.raises(NeftError, match=message):
        build_plan(from_dict(CompareConfig, values))
    assert not (tmp_path / "out").exists()


def test_a_front_extended_at_one_end_keeps_its_seeded_rate_and_its_runs(
        tiny_model_dir, toy_data_dir, tmp_path):
    """learning_rate names the rate of the other seeds, so rates added below the middle
    add runs without moving the standard point or rerunning what exists."""
    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path)
    before = build_plan(from_dict(CompareConfig, values))
    values["methods"][1] = {"method": "lora", "lora_r": 2, "learning_rate": 1e-2,
                            "learning_rates": [1e-4, 1e-3, 1e-2, 3e-2]}
    after = build_plan(from_dict(CompareConfig, values))
    assert after.cell("lora-r2").seeded_rate == 1e-2
    lora = {r.folder: r.spec for r in after.runs if r.cell == "lora-r2"}
    assert {f for f in lora if not f.endswith("-s1")} == {
        "cells/lora-r2-lr0.01-s2", "cells/lora-r2-lr0.01-s3"}
    old = {r.folder: r.spec for r in before.runs}
    assert set(lora) - set(old) == {"cells/lora-r2-lr0.0001-s1"}
    assert all(old[f] == spec for f, spec in lora.items() if f in old)


def test_the_selection_cache_key_counts_a_quota_only_when_set():
    """Grids made before select_quota keep their neuron sets; a quota gets its own set."""
    from neft.experiments.compare.plan import selection_key

    train = {"model": "m", "method": "neft", "scorer": "fast-probe", "match_lora": 8,
             "seed": 1}
    assert selection_key({**train, "select_quota": None}) == selection_key(train)
    assert selection_key({**train, "select_quota": "layer"}) != selection_key(train)


def test_the_verdict_glance_puts_each_cells_verdicts_on_one_line():
    from neft.experiments.compare.report import verdict_glance

    rows = [
        {"other": "lora", "measure": "loss at matched drift", "drift_set": "a", "delta": -0.3,
         "verdict": "better", "seed_variance": 0.0},
        {"other": "lora", "measure": "drift at matched loss", "drift_set": "a", "delta": None,
         "verdict": "better (the other front never reaches this loss)", "seed_variance": 0.01},
        {"other": "lora", "measure": "bleu", "delta": 1.5, "verdict": "not resolved"},
        {"other": "full", "measure": "loss at matched drift", "drift_set": "a", "delta": 0.2,
         "verdict": "worse", "seed_variance": 0.01}]
    lines = verdict_glance(rows, ["a"])
    assert lines[2] == "| other | loss at matched drift, a | drift at matched loss, a | BLEU |"
    assert lines[4] == ("| lora | better (-0.3000) † | better (never reached) | "
                        "not resolved (+1.50) |")
    assert lines[5] == "| full | worse (+0.2000) | - | - |"
    assert "record bootstrap only" in lines[-1]


def test_verdicts_say_when_they_rest_on_the_line_from_the_base_or_past_the_front():
    from neft.experiments.compare.verdicts import Fronts

    def fronts_with(drift: float, loss: float) -> list[dict]:
        fronts = Fronts.__new__(Fronts)
        fronts.name, fronts.base, samples = "toy", {"test_loss": 3.0}, 3
        fronts.cells = {
            "a": {"xs": np.array([[0.0] * samples, [drift] * samples]),
                  "ys": np.array([[3.0] * samples, [loss] * samples]),
                  "standard": {"loss": np.full(samples, loss), "drift": np.full(samples, drift),
                               "seed_points": [(drift, loss)], "n": 1}},
            "b": {"xs": np.array([[0.0] * samples, [0.3] * samples, [0.5] * samples]),
                  "ys": np.array([[3.0] * samples, [2.4] * samples, [2.2] * samples]),
                  "standard": {"seed_points": [(0.3, 2.41), (0.3, 2.39)]}}}
        return {r["measure"]: r for r in fronts.compare("a", "b")}

    low = fronts_with(0.1, 2.5)  # below b's first point on both axes
    assert low["loss at matched drift"]["from_base"] and low["drift at matched loss"]["from_base"]
    assert not low["loss at matched drift"]["past_front"]
    inside = fronts_with(0.4, 2.3)
    assert not any(r["from_base"] or r["past_front"] for r in inside.values())
    past = fronts_with(0.6, 2.3)
    assert past["loss at matched drift"]["past_front"]
    assert past["loss at matched drift"]["delta"] == pytest.approx(2.3 - 2.2)
    below = fronts_with(0.4, 2.1)  # a loss b's front never reaches: a win not measured
    assert below["drift at matched loss"]["past_front"]
    assert below["drift at matched loss"]["verdict"].startswith("better (the other front never")


def test_the_selection_study_names_a_winner_only_without_a_resolved_loss():
    study = load_benchmark("selection_study")

    def grid(*verdicts):
        return {"rows": [{"reference": cell, "verdict": verdict} for cell, verdict in verdicts]}

    en_de = grid(("a", "better"), ("a", "not resolved"), ("b", "better"), ("b", "worse"),
                 ("c", "not resolved"))
    summary = grid(("a", "better (the other front never reaches this loss)"),
                   ("b", "better"), ("c", "better"))
    assert study.tally(en_de["rows"])["b"] == {"better": 1, "on_line": 0, "worse": 1,
                                               "verdicts": 2}
    assert study.winners([en_de, summary]) == ["a"]  # b lost once, c never won on en-de
    assert study.winners([en_de]) == ["a"]
    on_line = {"rows": [{"reference": "a", "verdict": "better", "from_base": True},
                        {"reference": "d", "verdict": "better", "past_front": True},
                        {"reference": "d", "verdict": "better"}]}
    assert study.tally(on_line["rows"])["a"]["on_line"] == 1
    assert study.winners([on_line]) == ["d"]  # a's only win was read on a line


@pytest.mark.parametrize("screen", ["selection-en-de", "selection-sum-en-en",
                                    "evidence-en-de", "evidence-sum-en-en"])
def test_every_cell_of_a_committed_grid_runs_end_to_end(tiny_model_dir, toy_data_dir,
                                                        tmp_path, screen):
    """Each method, scorer and allocation the grid names selects, trains and is measured,
    on a tiny model (its own count, band and one rate, the grid's cells otherwise): hours
    of a grid are not spent to find one cell failing."""
    import yaml

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "compare",
                        f"{screen}.yaml")
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    methods = []
    for cell in config["methods"]:
        name = cell.get("name") or _cell_name(cell["method"], cell, "lora8")  # the screen's
        cell = {**cell, "name": name, "seeds": [1]}
        if cell.pop("match_lora", None):
            cell["num_neurons"] = 6
        if cell["method"] == "lora":
            cell["lora_r"] = 2
        if "learning_rates" in cell:
            cell.pop("learning_rate", None)
            cell["learning_rates"] = [1e-2]
        if "select_layers" in cell:
            cell["select_layers"] = "upper:1"
        methods.append(cell)
    values = front_grid(tiny_model_dir, toy_data_dir, tmp_path, seeds=[1], methods=methods,
                        reference=config.get("reference"),
                        test_split=config.get("test_split", "test"),
                        front={**config["front"], "steps": [2, 4]})
    values["front"]["drift_data"] = str(tmp_path / "toy.jsonl")
    outcome = compare(values)
    assert not outcome["failed"]
    finished = {p.parent.name for p in (tmp_path / "out/cells").glob("*/result.json")}
    for name in (m["name"] for m in methods):
        assert any(f == f"{name}-s1" or f.startswith(f"{name}-lr") for f in finished), name
    verdicts = json.loads((tmp_path / "out/compare.json").read_text())["fronts"]["verdicts"]
    others = {m["name"] for m in methods} - {config["reference"]}
    assert {r["other"] for r in verdicts if r["reference"] == config["reference"]} == others


def toy_fronts(cell_points: list, random_points: list):
    """A cell against random neurons whose first-seed front runs from (0, 3.0) to
    (0.2, 2.0): loss 3 - 5 x drift."""
    from neft.experiments.compare.verdicts import Fronts

    fronts = Fronts.__new__(Fronts)
    fronts.name, fronts.base = "toy", None
    samples = 5
    drift, loss = np.mean(cell_points, axis=0)
    fronts.cells = {
        "cell": {"xs": np.array([[drift] * samples]), "ys": np.array([[loss] * samples]),
                 "standard": {"loss": np.full(samples, loss), "drift": np.full(samples, drift),
                              "seed_points": cell_points, "n": len(cell_points)}},
        "random": {"xs": np.array([[0.0] * samples, [0.2] * samples]),
                   "ys": np.array([[3.0] * samples, [2.0] * samples]),
                   "standard": {"seed_points": random_points}}}
    return {r["measure"]: r for r in fronts.compare("cell", "random")}


def test_a_one_seed_cell_borrows_the_seed_spread_of_a_seeded_reference():
    """A screen's cell (one seed) against random neurons (three): random's spread, each
    seed read against random's own front, counts for both sides, not for one."""
    random_points = [(0.2, 2.0), (0.1, 2.53), (0.1, 2.47)]  # offsets 0, +0.03, -0.03
    rows = toy_fronts([(0.1, 2.4)], random_points)
    assert rows["loss at matched drift"]["seed_variance"] == pytest.approx(2 * 0.03 ** 2)
    assert rows["drift at matched loss"]["seed_variance"] == pytest.approx(2 * 0.006 ** 2)
    assert rows["loss at matched drift"]["seed_variance_borrowed"]


def test_the_seed_spread_is_the_verdicts_own_not_the_raw_losses():
    """Seeds that end at the same loss but at different drift read differently against a
    front: that spread enters the interval (the raw losses' spread, zero here, would call
    a cell identical to the reference better)."""
    same_loss = [(0.1, 2.5), (0.12, 2.5), (0.06, 2.5)]  # offsets 0, +0.1, -0.2 on 3 - 5x
    rows = toy_fronts(same_loss, same_loss)
    row = rows["loss at matched drift"]
    assert row["delta"] == pytest.approx(2.5 - (3 - 5 * 0.28 / 3))  # the mean point: -0.033
    spread = float(np.std([0.0, 0.1, -0.2], ddof=1))
    assert row["seed_variance"] == pytest.approx(spread ** 2 / 3 + spread ** 2)
    assert row["verdict"] == "not resolved" and not row["seed_variance_borrowed"]
