"""`neft compare` on a tiny model: a grid with an lr sweep finishes and reports; reruns
recompute nothing; unfinished runs are redone or resumed; changed settings and bad
configs are errors; a crashing run in its own process stops only itself."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from neft import NeftError, NeuronSet
from neft.cli import main as cli_main
from neft.compare import CompareConfig, build_plan, compare
from neft.config import from_dict


def grid(tiny_model_dir: str, toy_data_dir: str, output_dir, **options) -> dict:
    values = dict(
        output_dir=str(output_dir), model=tiny_model_dir, data=toy_data_dir,
        max_dev_samples=4, max_test_samples=4, seeds=[1, 2], isolate=False,
        keep_checkpoints=True,
        train=dict(max_steps=2, eval_steps=1, logging_steps=1, per_device_train_batch_size=4,
                   per_device_eval_batch_size=4, max_length=64),
        eval=dict(max_new_tokens=4, batch_size=4),
        lr_sweep=dict(values=[1e-3, 1e-2], steps=1),
        methods=[{"method": "neft", "num_neurons": 6}, {"method": "lora", "lora_r": 2}])
    values.update(options)
    return values


def result_mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("result.json")}


@pytest.fixture(scope="module")
def finished_grid(tiny_model_dir, toy_data_dir, tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("grid") / "out"
    values = grid(tiny_model_dir, toy_data_dir, root)
    return root, values, compare(values)


def copy_of(finished_grid, tmp_path: Path) -> tuple[Path, dict]:
    root, values, _ = finished_grid
    copy = tmp_path / "out"
    shutil.copytree(root, copy)
    return copy, {**values, "output_dir": str(copy)}


def test_grid_trains_sweeps_evaluates_and_reports(finished_grid) -> None:
    root, _, outcome = finished_grid
    assert not outcome["failed"]
    assert sorted(outcome["ran"]) == sorted(
        [f"cells/{c}-s{s}" for c in ("neft-6n", "lora-r2") for s in (1, 2)]
        + [f"sweep/{c}-lr{v}" for c in ("neft-6n", "lora-r2") for v in ("0.001", "0.01")])
    report = json.loads((root / "compare.json").read_text())
    cells = {c["cell"]: c for c in report["cells"]}
    assert set(cells) == {"neft-6n", "lora-r2"}
    for cell in cells.values():
        assert cell["lr_source"] == "sweep"
        assert cell["learning_rate"] in (1e-3, 1e-2)
        assert cell["lr_sweep"]["chosen"] == cell["learning_rate"]
        assert set(cell["lr_sweep"]["dev_loss"]) == {"1e-3", "1e-2"}
        assert cell["seeds_done"] == [1, 2]
        for metric in ("bleu", "chrf"):
            assert len(cell["scores"][metric]["per_seed"]) == 2
            assert cell["scores"][metric]["std"] is not None
        assert cell["peak_memory_mb"] > 0 and cell["seconds_per_run"] > 0
        # the kept checkpoint's dev loss, per seed, as the run recorded it
        for seed, loss in cell["dev_loss"]["per_seed"].items():
            result = json.loads((root / f"cells/{cell['cell']}-s{seed}/result.json").read_text())
            assert loss == result["dev_loss"] > 0
        assert cell["dev_loss"]["n"] == 2
        assert all(0 <= n <= 4 for n in cell["at_token_cap"].values())
    assert cells["neft-6n"]["trainable_parameters"] == 6 * 16
    # every run records its lr; cells record the lr their sweep chose
    for seed in (1, 2):
        result = json.loads((root / f"cells/neft-6n-s{seed}/result.json").read_text())
        assert result["learning_rate"] == cells["neft-6n"]["learning_rate"]
        assert result["spec"]["lr"]["source"] == "sweep"
    # neurons are selected once per seed and shared by the sweep and the cell
    assert len(list((root / "neurons").glob("neft-6n-s*.safetensors"))) == 2
    table = (root / "compare.md").read_text()
    assert "| neft-6n | neft | 6 neurons |" in table and "lora-r2" in table
    assert "± " in table and "Learning-rate sweep" in table and "| dev loss |" in table
    assert " of 4 |" in table  # answers at the token cap, of the 4 test records
    assert "the first 4 records are scored" in table and "learning rate: per cell" in table
    assert "Written " in table and "cores, torch " in table and report["machine"]["cpus"]
    assert (root / "compare.png").stat().st_size > 1000
    # sweep runs keep their logs but not their weights
    assert not list((root / "sweep").rglob("*.safetensors"))


def test_rerun_recomputes_nothing(finished_grid, tmp_path, capsys) -> None:
    root, values = copy_of(finished_grid, tmp_path)
    before = result_mtimes(root)
    outcome = compare(values)
    assert outcome["ran"] == [] and outcome["failed"] == []
    assert len(outcome["skipped"]) == 8
    assert result_mtimes(root) == before
    assert "done earlier" in capsys.readouterr().out


def test_unfinished_runs_are_redone_or_resumed(finished_grid, tmp_path) -> None:
    root, values = copy_of(finished_grid, tmp_path)
    before = result_mtimes(root)
    # killed during the test evaluation: training finished, no result.json
    (root / "cells/lora-r2-s2/result.json").unlink()
    train_log = root / "cells/lora-r2-s2/train/training_log.json"
    trained_at = train_log.stat().st_mtime_ns
    # killed during training: a checkpoint, but no final summary
    run_file = root / "cells/neft-6n-s2/train/neft_run.json"
    (root / "cells/neft-6n-s2/result.json").unlink()
    run_file.write_text(json.dumps({k: v for k, v in json.loads(run_file.read_text()).items()
                                    if k != "result"}))
    # killed before anything was written but the job file
    (root / "cells/neft-6n-s1/result.json").unlink()
    shutil.rmtree(root / "cells/neft-6n-s1/train")

    outcome = compare(values)
    assert sorted(outcome["ran"]) == ["cells/lora-r2-s2", "cells/neft-6n-s1", "cells/neft-6n-s2"]
    assert len(outcome["skipped"]) == 5
    how = {cell: json.loads((root / cell / "result.json").read_text())["training"]
           for cell in outcome["ran"]}
    assert how == {"cells/lora-r2-s2": "reused", "cells/neft-6n-s2": "resumed",
                   "cells/neft-6n-s1": "trained"}
    assert train_log.stat().st_mtime_ns == trained_at
    after = result_mtimes(root)
    assert all(after[k] == v for k, v in before.items() if not k.startswith(tuple(outcome["ran"])))


def test_a_dry_run_prices_what_is_left_at_the_pace_of_finished_runs(
        finished_grid, tmp_path, capsys) -> None:
    root, values = copy_of(finished_grid, tmp_path)
    for cell, seconds in (("lora-r2-s1", 600.0), ("neft-6n-s1", 120.0)):
        path = root / "cells" / cell / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "wall_seconds": seconds}))
    (root / "cells/lora-r2-s2/result.json").unlink()  # left: 600 s, its cell's pace
    (root / "cells/neft-6n-s2/result.json").unlink()  # left: 120 s
    before = result_mtimes(root)
    outcome = compare({**values, "dry_run": True})
    assert outcome["ran"] == [] and result_mtimes(root) == before
    assert outcome["hours_left"] == pytest.approx(720 / 3600)
    out = capsys.readouterr().out
    assert "(~10 min)" in out and "(~2 min)" in out and "0.2 h left for 2 of them" in out
    compare(values)  # the progress line of a starting run says what is left
    assert "about 0.2 h of runs left in the grid" in capsys.readouterr().out


def test_runs_record_their_data_files_contents_not_only_the_path(tiny_model_dir, toy_data_dir,
                                                                 tmp_path) -> None:
    """A data file edited in place makes every run on it a changed one; runs recorded
    before the contents were (no data_files) are taken as made with the current files, and
    runs recorded before a setting existed as made with its old behaviour."""
    from neft.experiments.compare.plan import first_difference

    data = tmp_path / "data"
    shutil.copytree(toy_data_dir, data)

    def specs() -> list[dict]:
        plan = build_plan(from_dict(CompareConfig, grid(tiny_model_dir, str(data),
                                                        tmp_path / "out")))
        return [run.spec for run in plan.runs]

    before = specs()
    assert set(before[-1]["data_files"]) == {"train", "dev", "test"}
    with open(data / "test.jsonl", "a") as handle:
        handle.write(json.dumps({"source": "One more.", "target": "Noch eins."}) + "\n")
    after = specs()
    assert first_difference(before[-1], after[-1]).startswith("data_files.test: ")
    assert first_difference(before[-1]["data_files"], after[-1]["data_files"]) is not None
    recorded_earlier = {k: v for k, v in after[-1].items() if k != "data_files"}
    assert first_difference(recorded_earlier, after[-1]) is None
    # A setting added later: a record without it was made with its old behaviour.
    train = {k: v for k, v in after[-1]["train"].items() if k != "torch_compile"}
    assert after[-1]["train"]["torch_compile"] is False
    assert first_difference({**after[-1], "train": train}, after[-1]) is None
    compiled = {**after[-1], "train": {**after[-1]["train"], "torch_compile": True}}
    assert first_difference({**after[-1], "train": train}, compiled) == (
        "train.torch_compile: None -> True")


def test_a_missing_split_names_the_option_that_asked_for_it(tiny_model_dir, toy_data_dir,
                                                            tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(toy_data_dir, data)
    os.rename(data / "dev.jsonl", data / "validation.jsonl")
    values = grid(tiny_model_dir, str(data), tmp_path / "out", test_split="dev",
                  dry_run=True)
    with pytest.raises(NeftError, match=r"has no dev\.jsonl .*asked for by dev_split dev and "
                                        r"test_split dev: pass --dev_split"):
        compare(values)
    assert not compare({**values, "dev_split": "validation", "test_split": "validation"})[
        "failed"]


def test_a_budget_past_the_models_pool_fails_before_any_run(tiny_model_dir, toy_data_dir,
                                                            tmp_path) -> None:
    values = grid(tiny_model_dir, toy_data_dir, tmp_path / "out",
                  methods=[{"method": "lora", "lora_r": 2}, {"method": "random", "match_lora": 64}])
    with pytest.raises(NeftError, match=r"cell random-lora64: budget of .* exceeds the "
                                        r"candidate pool"):
        compare({**values, "dry_run": True})
    assert not (tmp_path / "out" / "cells").exists()


def test_changed_settings_are_never_reused(finished_grid, tmp_path) -> None:
    root, values = copy_of(finished_grid, tmp_path)
    changed = {**values, "train": {**values["train"], "max_steps": 3}}
    with pytest.raises(NeftError, match="max_steps: 2 -> 3.*recompute_changed"):
        compare(changed)
    outcome = compare({**changed, "dry_run": True})
    assert len(outcome["states"]["changed"]) == 4  # the sweeps have their own steps


def test_recomputing_a_new_decoding_keeps_the_trainings(finished_grid, tmp_path) -> None:
    """Only the scoring changed: --recompute_changed scores the cells again with the new
    decoding and reuses their finished trainings; a changed training is trained again."""
    root, values = copy_of(finished_grid, tmp_path)
    trained_at = {p.parent.parent.name: p.stat().st_mtime_ns
                  for p in root.glob("cells/*/train/training_log.json")}
    sweeps_before = {k: v for k, v in result_mtimes(root).items() if k.startswith("sweep")}
    changed = {**values, "eval": {**values["eval"], "no_repeat_ngram_size": 4}}
    with pytest.raises(NeftError, match="recompute_changed"):
        compare(changed)
    outcome = compare({**changed, "recompute_changed": True})
    assert sorted(outcome["ran"]) == sorted(f"cells/{c}-s{s}" for c in ("neft-6n", "lora-r2")
                                            for s in (1, 2))
    for cell, when in trained_at.items():
        result = json.loads((root / "cells" / cell / "result.json").read_text())
        assert result["training"] == "reused"
        assert result["spec"]["eval"]["no_repeat_ngram_size"] == 4
        assert (root / "cells" / cell / "train/training_log.json").stat().st_mtime_ns == when
    assert {k: v for k, v in result_mtimes(root).items() if k.startswith("sweep")} == sweeps_before
    report = {c["cell"]: c for c in json.loads((root / "compare.json").read_text())["cells"]}
    for cell in trained_at:  # a reused training keeps its peak memory in the table
        result = json.loads((root / "cells" / cell / "result.json").read_text())
        name = cell.rsplit("-s", 1)[0]
        assert report[name]["peak_memory_mb"] >= result["train"]["peak_memory_mb"] > 0

    longer = {**changed, "train": {**values["train"], "max_steps": 3}, "recompute_changed": True}
    outcome = compare(longer)
    result = json.loads((root / "cells/lora-r2-s1/result.json").read_text())
    assert result["training"] == "trained" and result["spec"]["train"]["max_steps"] == 3


def test_a_new_scorer_changes_only_neft_runs(finished_grid, tmp_path) -> None:
    """The scorer decides NeFT's neurons and nothing of LoRA's runs: LoRA's are kept."""
    root, values = copy_of(finished_grid, tmp_path)
    changed = {**values, "train": {**values["train"], "scorer": "magnitude"}}
    outcome = compare({**changed, "dry_run": True})
    assert sorted(outcome["states"]["changed"]) == sorted(
        ["cells/neft-6n-s1", "cells/neft-6n-s2", "sweep/neft-6n-lr0.001", "sweep/neft-6n-lr0.01"])
    assert len(outcome["states"]["done"]) == 4


def test_leaving_units_out_changes_only_the_runs_that_select(finished_grid, tmp_path) -> None:
    """select_avoid shapes NeFT's neurons, never LoRA's runs; pinning neft's default
    recomputes nothing ('none' is also what grids recorded before the option existed)."""
    from neft.select.massive import DEFAULT_AVOID

    root, values = copy_of(finished_grid, tmp_path)
    pinned = {**values, "train": {**values["train"], "select_avoid": DEFAULT_AVOID or "none"}}
    assert len(compare({**pinned, "dry_run": True})["states"]["done"]) == 8
    other = "none" if DEFAULT_AVOID else "massive"
    changed = {**values, "train": {**values["train"], "select_avoid": other}}
    outcome = compare({**changed, "dry_run": True})
    assert sorted(outcome["states"]["changed"]) == sorted(
        ["cells/neft-6n-s1", "cells/neft-6n-s2", "sweep/neft-6n-lr0.001", "sweep/neft-6n-lr0.01"])
    lora_own = {**values, "methods": [{"method": "lora", "lora_r": 2,
                                       "select_avoid": "massive"}]}
    with pytest.raises(NeftError, match=r"methods\[0\]: select_avoid shapes a neuron "
                                        r"selection, and this cell selects none"):
        build_plan(from_dict(CompareConfig, lora_own))


def test_the_default_and_random_cells_differ_by_the_avoid_rule(tiny_model_dir, toy_data_dir,
                                                              tmp_path) -> None:
    """Unpinned, a neft cell (the default: random neurons, massive units left out) and a
    random cell (the control: uniformly random) are two runs, not one run twice."""
    from neft.select.massive import DEFAULT_AVOID

    values = grid(tiny_model_dir, toy_data_dir, tmp_path / "grid", lr_sweep={},
                  train={"max_steps": 2, "learning_rate": 1e-3},
                  methods=[{"method": "neft", "num_neurons": 6},
                           {"method": "random", "num_neurons": 6}])
    plan = build_plan(from_dict(CompareConfig, values))
    avoid = {run.cell: run.spec["train"]["select_avoid"] for run in plan.runs
             if run.kind == "cell"}
    assert avoid == {"neft-6n": DEFAULT_AVOID, "random-6n": None}


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob(
    "benchmarks/compare/*.yaml")), ids=lambda p: p.stem)
def test_committed_grids_pin_what_a_default_could_change(path: Path) -> None:
    """Every cell that selects neurons names its scorer and what it leaves out, itself or
    in the shared train: block, so that a new default never turns a recorded cell into
    another method (its old records would be recomputed, or worse, misread)."""
    config = yaml.safe_load(path.read_text())
    shared = config.get("train", {})
    for cell in config["methods"]:
        if cell["method"] not in ("neft", "random") or cell.get("neurons"):
            continue
        settings = {**shared, **cell}
        assert "select_avoid" in settings, (path.name, cell)
        if cell["method"] == "neft":
            assert "scorer" in settings, (path.name, cell)


def test_a_cell_can_have_its_own_sweep(tiny_model_dir, toy_data_dir, tmp_path) -> None:
    """per: method shares the first cell's lr; own_sweep: true sweeps a cell by itself, or
    own_sweep: [values] with its own values (a LoRA rank whose best lr differs)."""
    plan = build_plan(from_dict(CompareConfig, grid(
        tiny_model_dir, toy_data_dir, tmp_path, lr_sweep={"values": [1e-3, 1e-2], "per": "method"},
        methods=[{"method": "lora", "lora_r": 2}, {"method": "lora", "lora_r": 4},
                 {"method": "lora", "lora_r": 8, "own_sweep": True},
                 {"method": "lora", "lora_r": 16, "own_sweep": [2e-2, 4e-2]},
                 {"method": "lora", "lora_r": 32}])))
    owners = {cell.name: cell.sweep.cell for cell in plan.cells}
    assert owners == {"lora-r2": "lora-r2", "lora-r4": "lora-r2", "lora-r8": "lora-r8",
                      "lora-r16": "lora-r16", "lora-r32": "lora-r2"}
    assert [r.learning_rate for r in plan.sweeps["lora-r8"]] == [1e-3, 1e-2]
    assert [r.learning_rate for r in plan.sweeps["lora-r16"]] == [2e-2, 4e-2]
    assert sorted(plan.sweeps) == ["lora-r16", "lora-r2", "lora-r8"]
    assert {cell.sweep.per for cell in plan.cells} == {"method"}  # as the report states it
    with pytest.raises(NeftError, match="own_sweep must be true, false or a list"):
        build_plan(from_dict(CompareConfig, grid(
            tiny_model_dir, toy_data_dir, tmp_path,
            methods=[{"method": "lora", "own_sweep": "yes"}])))
    with pytest.raises(NeftError, match="own_sweep needs an lr_sweep"):
        build_plan(from_dict(CompareConfig, grid(
            tiny_model_dir, toy_data_dir, tmp_path,
            methods=[{"method": "lora", "own_sweep": True, "learning_rate": 1e-3}])))


def test_a_subset_of_cells_runs_the_grids_own_runs(tiny_model_dir, toy_data_dir,
                                                  tmp_path) -> None:
    """cells: runs only the cells named, with the very runs (folders and specs) of the whole
    grid, so either reuses the other's finished runs."""
    methods = [{"method": "lora", "lora_r": 2, "learning_rate": 1e-3},
               {"method": "neft", "num_neurons": 6, "learning_rate": 1e-2},
               {"method": "full", "learning_rate": 1e-4}]
    whole = build_plan(from_dict(CompareConfig, grid(tiny_model_dir, toy_data_dir, tmp_path,
                                                     methods=methods, include_base=True)))
    part = build_plan(from_dict(CompareConfig, grid(tiny_model_dir, toy_data_dir, tmp_path,
                                                    methods=methods, include_base=True,
                                                    cells="full, lora-r2")))
    assert [c.name for c in part.cells] == ["lora-r2", "full"]  # the grid's order
    runs = {r.folder: r.spec for r in whole.runs}
    assert {r.folder for r in part.runs} == {"cells/base", *(
        f for f in runs if f.startswith(("cells/lora-r2-", "cells/full-")))}
    assert all(runs[r.folder] == r.spec for r in part.runs)
    def plan(cells, **options):
        return build_plan(from_dict(CompareConfig, grid(tiny_model_dir, toy_data_dir, tmp_path,
                                                        cells=cells, **options)))

    with pytest.raises(NeftError, match="'neft-6' is not a cell of the grid; did you mean "
                                        "'neft-6n'"):
        plan("neft-6", methods=methods)
    with pytest.raises(NeftError, match="names no cell"):
        plan(" , ", methods=methods)
    # what a cell borrows must come along, or its runs would not be the grid's
    with pytest.raises(NeftError, match="neft-12n takes its learning rate from neft-6n's sweep"):
        plan("neft-12n", lr_sweep={"values": [1e-3, 1e-2], "per": "method"},
             methods=[{"method": "neft", "num_neurons": 6}, {"method": "neft", "num_neurons": 12}])
    fronts = dict(front={"steps": [1]}, include_base=True,
                  methods=[{"method": "lora", "lora_r": 2, "learning_rates": [1e-3, 1e-2],
                            "max_length": 32},
                           {"method": "neft", "num_neurons": 6, "learning_rates": [1e-2, 3e-2]}])
    with pytest.raises(NeftError, match="leaves out 'neft-6n', the reference"):
        plan("lora-r2", **fronts)
    # a front is measured at the whole grid's length whichever cell a subset starts with
    whole_front = plan(None, **fronts)
    part_front = plan("neft-6n", **fronts)
    assert part_front.front["max_length"] == whole_front.front["max_length"] == 32
    assert part_front.runs[0].spec == whole_front.runs[0].spec  # the base


def test_bad_configs_are_errors(tiny_model_dir, toy_data_dir, tmp_path, capsys) -> None:
    def plan(**options):
        return build_plan(from_dict(CompareConfig, grid(tiny_model_dir, toy_data_dir,
                                                        tmp_path, **options)))

    with pytest.raises(NeftError, match="did you mean 'lora_r'"):
        plan(methods=[{"method": "lora", "lora_rank": 8}])
    with pytest.raises(NeftError, match="seed is set by compare"):
        plan(train={"seed": 3})
    with pytest.raises(NeftError, match="no learning rates for method lora"):
        plan(lr_sweep={"values": {"neft": [1e-3]}})
    with pytest.raises(NeftError, match="a second cell named"):
        plan(methods=[{"method": "lora"}, {"method": "lora", "lora_r": 8}])
    with pytest.raises(NeftError, match="method 'qlora' is not known"):
        plan(methods=[{"method": "qlora"}])
    with pytest.raises(NeftError, match="did you mean 'steps'"):
        plan(lr_sweep={"values": [1e-3], "step": 3})
    with pytest.raises(NeftError, match="missing.safetensors does not exist"):
        plan(methods=[{"method": "neft", "neurons": str(tmp_path / "missing.safetensors")}])
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump({**grid(tiny_model_dir, toy_data_dir, tmp_path),
                                      "method": [{"method": "lora"}]}))
    assert cli_main(["compare", "--config", str(config)]) == 2
    assert "did you mean 'methods'" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({**grid(tiny_model_dir, toy_data_dir, tmp_path),
                                      "test_split": "nope"}))
    assert cli_main(["compare", "--config", str(config)]) == 2
    assert "nope" in capsys.readouterr().err
    # a broken line deep in the training split fails before any run, and writes nothing
    data = tmp_path / "data"
    shutil.copytree(toy_data_dir, data)
    lines = (data / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join([*lines[:5], '{"source": "a",', *lines[5:]]))
    output = tmp_path / "grid"
    config.write_text(yaml.safe_dump(grid(tiny_model_dir, str(data), output)))
    assert cli_main(["compare", "--config", str(config)]) == 2
    assert "train.jsonl:6: malformed JSON" in capsys.readouterr().err
    assert not output.exists()


def broken_cell(tmp_path: Path) -> dict:
    """A cell whose runs fail once they start: its neurons name a layer the model lacks."""
    path = tmp_path / "broken.safetensors"
    NeuronSet.from_mapping({"model.layers.7.mlp.up_proj": {"rows": [1]}}).save(str(path))
    return {"method": "neft", "neurons": str(path), "name": "broken", "learning_rate": 1e-2}


def test_a_failing_run_stops_only_itself(tiny_model_dir, toy_data_dir, tmp_path) -> None:
    values = grid(tiny_model_dir, toy_data_dir, tmp_path / "out", seeds=[1], lr_sweep=None,
                  methods=[broken_cell(tmp_path),
                           {"method": "lora", "lora_r": 2, "learning_rate": 1e-2}])
    outcome = compare(values)
    assert outcome["failed"] == ["cells/broken-s1"]
    assert outcome["ran"] == ["cells/lora-r2-s1"]
    assert not (tmp_path / "out/cells/broken-s1/result.json").exists()
    assert "does not have" in (tmp_path / "out/cells/broken-s1/failed.txt").read_text()
    again = compare(values)  # only the failed run is tried again
    assert again["failed"] == ["cells/broken-s1"] and again["ran"] == []
    assert again["skipped"] == ["cells/lora-r2-s1"]


def test_runs_in_their_own_processes(tiny_model_dir, toy_data_dir, tmp_path) -> None:
    out = tmp_path / "out"
    values = grid(tiny_model_dir, toy_data_dir, out, isolate=True, seeds=[1],
                  lr_sweep=None, keep_checkpoints=False,
                  methods=[{"method": "lora", "lora_r": 2, "learning_rate": 1e-2},
                           broken_cell(tmp_path)])
    outcome = compare(values)
    assert outcome["ran"] == ["cells/lora-r2-s1"]
    assert outcome["failed"] == ["cells/broken-s1"]
    # the failed process's own error reaches the grid's log, and nothing of it counts
    log = (out / "compare.log").read_text()
    assert "FAILED" in log and "exit status 2" in log and "which this model does not have" in log
    assert "RuntimeWarning" not in log
    assert not (out / "cells/broken-s1/result.json").exists()
    result = json.loads((out / "cells/lora-r2-s1/result.json").read_text())
    assert result["memory_scope"] == "peak RSS of the run's process"
    assert result["learning_rate"] == 1e-2 and result["spec"]["lr"]["source"] == "given"
    assert "scores" in result and result["peak_memory_mb"] > 0
    assert (out / "cells/lora-r2-s1/log.txt").stat().st_size > 0
    assert not list((out / "cells/lora-r2-s1/train").glob("checkpoint-*"))
    assert "lora-r2" in (out / "compare.md").read_text()
    assert os.path.isfile(out / "compare.log")


def test_a_neft_cell_with_a_quota_and_a_layer_band_trains(tiny_model_dir, toy_data_dir,
                                                          tmp_path) -> None:
    """The grid selects once with the cell's quota and band, then trains on that set."""
    values = grid(tiny_model_dir, toy_data_dir, tmp_path, seeds=[1], lr_sweep=None,
                  methods=[{"method": "neft", "scorer": "magnitude", "num_neurons": 8,
                            "select_quota": "layer", "select_layers": "upper:1",
                            "learning_rate": 1e-2}])
    outcome = compare(values)
    assert not outcome["failed"] and len(outcome["ran"]) == 1
    (path,) = (tmp_path / "neurons").glob("*")
    neurons = NeuronSet.load(str(path))
    assert neurons.metadata["quota"] == "layer" and neurons.num_neurons() == 8
    layers = {int(re.search(r"layers\.(\d+)\.", name).group(1)) for name in neurons.to_mapping()}
    assert layers == {max(layers)} and max(layers) > 0  # the upper layer only


def test_a_grid_reads_back_from_anywhere(tiny_model_dir, toy_data_dir, tmp_path,
                                         monkeypatch) -> None:
    """A report tool run from another folder still finds a grid's relative data paths."""
    from neft.experiments.compare.results import current, grid_plan

    work = tmp_path / "worktree"
    work.mkdir()
    shutil.copytree(toy_data_dir, work / "data")
    monkeypatch.chdir(work)
    compare(grid(tiny_model_dir, "data", "outputs/g", seeds=[1], lr_sweep=None,
                 methods=[{"method": "lora", "lora_r": 2, "learning_rate": 1e-2}]))
    monkeypatch.chdir(tmp_path)
    plan, _ = grid_plan(str(work / "outputs/g"))
    assert plan.runs and all(current(plan, run) is not None for run in plan.runs)
