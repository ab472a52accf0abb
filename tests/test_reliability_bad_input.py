"""Bad input through the real command line (`neft.cli.main`, in process): every case is
exit status 2, one error line that names the problem and the fix, no traceback, and no
file written or changed anywhere (outputs are written whole under a temporary name, and
nothing is written before every check has passed).

The README's reliability table lists the same cases with what the user sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from conftest import TRANSLATIONS
from transformers.utils import logging as hf_logging

from neft.cli import main
from neft.config import from_dict
from neft.errors import NeftError
from neft.select import select_neurons
from neft.train import TrainConfig, train

hf_logging.disable_progress_bar()  # the loading bar is not part of what is checked


def _save_llama(folder: Path, tokenizer_dir: str, intermediate: int) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16,
                                      intermediate_size=intermediate, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2,
                                      pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(1)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def world(tiny_model_dir: str, toy_data_dir: str, tmp_path_factory) -> dict[str, str]:
    """Everything a user might pass, good and bad, made once per module."""
    root = tmp_path_factory.mktemp("bad-input")
    paths = {"m": tiny_model_dir, "d": toy_data_dir, "root": str(root)}

    _save_llama(root / "model2", tiny_model_dir, intermediate=32)  # another base model
    paths["m2"] = str(root / "model2")
    mamba = transformers.MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                     state_size=4, intermediate_size=32)
    transformers.AutoModelForCausalLM.from_config(mamba).save_pretrained(root / "mamba")
    transformers.AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "mamba")
    shutil.copytree(tiny_model_dir, root / "corrupt-model")
    _truncate(root / "corrupt-model" / "model.safetensors")
    shutil.copytree(tiny_model_dir, root / "pickle-model")
    weights = root / "pickle-model" / "model.safetensors"
    torch.save(transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(),
               root / "pickle-model" / "pytorch_model.bin")
    weights.unlink()

    adapter = root / "adapter"
    train(from_dict(TrainConfig, dict(
        model=tiny_model_dir, train_file=f"{toy_data_dir}/train.jsonl", output_dir=str(adapter),
        method="random", num_neurons=4, max_steps=2, save_steps=2, max_length=64,
        per_device_train_batch_size=4, logging_steps=1)))
    shutil.copytree(adapter, root / "adapter-truncated", ignore=shutil.ignore_patterns("check*"))
    _truncate(root / "adapter-truncated" / "adapter_model.safetensors")
    shutil.copytree(adapter, root / "adapter-no-config", ignore=shutil.ignore_patterns("check*"))
    (root / "adapter-no-config" / "adapter_config.json").unlink()
    shutil.copytree(adapter, root / "adapter-bad-json", ignore=shutil.ignore_patterns("check*"))
    (root / "adapter-bad-json" / "adapter_config.json").write_text("{not json")
    (root / "lora").mkdir()
    (root / "lora" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (root / "damaged-run").mkdir()
    (root / "damaged-run" / "neft_run.json").write_text("{")
    (root / "notes").mkdir()
    (root / "notes" / "mine.txt").write_text("not a run")
    shutil.copytree(adapter, root / "run-with-data", ignore=shutil.ignore_patterns("check*"))
    shutil.copy(f"{toy_data_dir}/train.jsonl", root / "run-with-data" / "mine.jsonl")

    select_neurons(paths["m2"], "random", neurons=4, progress=False).save(root / "set2.safetensors")
    select_neurons(tiny_model_dir, "random", neurons=4, progress=False).save(
        root / "truncated.safetensors")
    _truncate(root / "truncated.safetensors")
    (root / "text.safetensors").write_text("these are not tensors\n")
    torch.save({"model.layers.0.mlp.up_proj::rows": torch.tensor([1])},
               root / "pickle.safetensors")

    rows = [{"source": s, "target": t, "tgt_lang": "de"} for s, t in TRANSLATIONS[:4]]
    lines = [json.dumps(r) for r in rows]
    broken = [lines[0], lines[1], '{"source": "a",', lines[2]]  # line 3 is cut short
    (root / "malformed.jsonl").write_text("\n".join(broken) + "\n")
    (root / "missing.jsonl").write_text(json.dumps({"source": "a b", "tgt_lang": "de"}) + "\n")
    (root / "empty-field.jsonl").write_text(json.dumps({**rows[0], "target": "  "}) + "\n")
    (root / "empty.jsonl").write_text("\n")
    (root / "header-only.csv").write_text("source,target\n")
    (root / "wrong-headers.csv").write_text("src,tgt\nthe file,die Datei\n")
    (root / "no-splits").mkdir()
    (root / "no-splits" / "other.jsonl").write_text(lines[0] + "\n")
    (root / "typo.yaml").write_text("learning_rte: 0.001\n")
    (root / "wrong-type.yaml").write_text("overwrite: maybe\n")
    (root / "fraction.yaml").write_text("max_steps: 2.5\n")
    (root / "empty-value.yaml").write_text("learning_rate:\n")
    (root / "a-file").write_text("x")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    for positions in (32, 128):  # learned positions: an IndexError past them
        gpt2 = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1,
                                       n_head=2, n_positions=positions,
                                       pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id)
        transformers.AutoModelForCausalLM.from_config(gpt2).save_pretrained(
            root / f"gpt2-{positions}")
        tokenizer.save_pretrained(root / f"gpt2-{positions}")
    (root / "analyze-out").mkdir()
    (root / "analyze-out" / "distribution.json").write_text("{}\n")
    (root / "broken.yaml").write_text("learning_rate: 0.001\nmax_steps: [1, 2\nseed: 3\n")
    (root / "twice.yaml").write_text("learning_rate: 0.001\nseed: 3\nlearning_rate: 0.1\n")
    (root / "config-folder").mkdir()
    shutil.copytree(adapter, root / "adapter-moved-base", ignore=shutil.ignore_patterns("check*"))
    config_path = root / "adapter-moved-base" / "adapter_config.json"
    moved = json.loads(config_path.read_text())
    moved["base_model_name_or_path"] = str(root / "base-that-moved")
    config_path.write_text(json.dumps(moved))
    paths.update({name: str(root / name) for name in os.listdir(root)})
    return paths


def T(*extra: str, model: str = "{m}", method: str = "random", data: str | None = "{d}",
      out: str = "{out}", budget: tuple[str, ...] = ("--num_neurons", "4"),
      steps: str = "2") -> list[str]:
    """`neft train` argv: a good command but for what the case changes."""
    argv = ["train", "--model", model, "--method", method, *budget, "--max_steps", steps,
            "--max_length", "64", "--output_dir", out]
    return argv + (["--train_file", data] if data else []) + list(extra)


SELECT = ["select", "--model", "{m}", "--scorer", "random", "--output", "{out}", "--quiet"]
MERGE = ["merge", "--model", "{m}", "--output_dir", "{out}"]
NEFT = {"method": "neft", "budget": ()}

# (case, argv, what the one error line must say)
CASES = [
    # data
    ("malformed JSONL line", T(data="{malformed.jsonl}"),
     r"malformed\.jsonl:3: malformed JSON .*fix or delete that line"),
    ("missing field", T(data="{missing.jsonl}"),
     r"missing\.jsonl:1: missing field 'target'.*fields present: source, tgt_lang"),
    ("empty field", T(data="{empty-field.jsonl}"),
     r"empty-field\.jsonl:1: field 'target' is empty; fill it in or remove that record"),
    ("empty data file", T(data="{empty.jsonl}"),
     r"empty\.jsonl has no records: give it at least one"),
    ("CSV with a header only", T(data="{header-only.csv}"),
     r"header-only\.csv has no records"),
    ("CSV with wrong headers", T(data="{wrong-headers.csv}"),
     r"wrong-headers\.csv:2: missing field 'source'.*fields present: src, tgt"),
    ("no records left by a limit", T("--max_train_samples", "0"),
     r"max_train_samples must be at least 1, not 0"),
    ("data folder without the split", T(data="{no-splits}"),
     r"no-splits has no train\.jsonl .*pass an existing split or a file path"),
    ("data file that does not exist", T(data="{root}/nope.jsonl"),
     r"data file '.*nope\.jsonl' does not exist: check the path"),
    ("eval data folder without the split", ["eval", "--model", "{m}", "--data", "{no-splits}"],
     r"no-splits has no test\.jsonl"),
    # budgets
    ("budget of zero neurons", T(budget=("--num_neurons", "0")),
     r"num_neurons must be at least 1, not 0"),
    ("negative budget", [*SELECT, "--neurons", "-3"], r"budget neurons=-3 must be positive"),
    ("unknown avoid rule", T("--select_avoid", "big"),
     r"avoid 'big' is not known; use massive.*none or auto"),
    ("misspelt layer band", T("--select_layers", "uper:2", method="neft"),
     r"layers 'uper:2': write A-B, a list such as 3,5,7, or upper:N"),
    ("scorer that needs a checkpoint in train", T("--scorer", "cosine", **NEFT),
     r"scorer cosine compares with a fine-tuned checkpoint.*then pass --neurons FILE"),
    ("scorer option of the wrong type", T("--scorer", "snip", "--scorer_options", "steps=many",
                                         **NEFT),
     r"scorer 'snip': steps is a number \(default 24\), not 'many'"),
    ("scorer option of the wrong type in select",
     [*SELECT[:4], "snip", *SELECT[5:], "--neurons", "3", "--data", "{d}", "--scorer_options",
      "batch_size=big"], r"scorer 'snip': batch_size is a number \(default 4\), not 'big'"),
    ("split of a single training file", T("--eval_split", "test", data="{d}/train.jsonl"),
     r"--eval_split is not used here \(--train_file .*train\.jsonl is one file, with no splits; "
     r"pass --eval_file FILE to evaluate\)"),
    ("LoRA option given to neuron training", T("--lora_alpha", "32"),
     r"--lora_alpha is not used here \(method random is not LoRA\): drop it"),
    ("match_lora beside another budget", T("--match_lora", "4", method="neft"),
     r"give one budget: --match_lora or --num_neurons, not both"),
    ("budget above the pool", [*SELECT, "--neurons", "10000"],
     r"budget of 10,000 neurons .* exceeds the candidate pool of 96 neurons"),
    ("percent above 100", T(budget=("--percent", "150")),
     r"percent must be in \(0, 100\], not 150"),
    ("two budgets at once", T("--percent", "1"),
     r"give one budget, num_neurons or percent, not both"),
    ("neuron budget given to LoRA", T("--percent", "1", method="lora", budget=()),
     r"--percent is not used here \(method lora has no neuron budget \(its size is --lora_r"),
    ("scorer given to full fine-tuning", T("--scorer", "probe", method="full", budget=()),
     r"--scorer is not used here \(method full selects no neurons\): drop it"),
    ("scorer given to random neurons", T("--scorer", "probe"),
     r"--scorer is not used here \(method random always uses scorer random\)"),
    ("budget beside a neuron file", T("--neurons", "{set2.safetensors}", method="neft"),
     r"--num_neurons is not used here \(--neurons gives the set, made earlier\)"),
    # modules and architectures
    ("unknown module name", [*SELECT, "--neurons", "3", "--target_modules", "mlp.nope=rows"],
     r"no linear layer matches 'mlp\.nope'"),
    ("a module named twice", [*SELECT, "--neurons", "3", "--target_modules",
                              "mlp.up_proj=rows,mlp.up_proj=cols"],
     r"names mlp.up_proj twice: give each module once \(both axes: mlp.up_proj=rows\+cols\)"),
    ("malformed --target_modules", [*SELECT, "--neurons", "3", "--target_modules", "mlp.up"],
     r"'mlp\.up': write module=axis pairs"),
    ("unknown LoRA module", T("--lora_target_modules", "q_prj", method="lora", budget=()),
     r"LoRA cannot be applied: .*q_prj"),
    ("unsupported architecture", [*SELECT[:2], "{mamba}", *SELECT[3:], "--neurons", "3"],
     r"no MLP neuron preset matches MambaForCausalLM; name the modules"),
    # other base model (fingerprints)
    ("adapter of another base model", [*MERGE[:2], "{m2}", *MERGE[3:], "--adapter", "{adapter}"],
     r"adapter .* was trained on another base model \(fingerprint"),
    ("NeuronSet of another base model", T("--neurons", "{set2.safetensors}", **NEFT),
     r"neuron set was made for another base model .*; its modules have other shapes here, "
     r"so select neurons on this model"),
    # damaged and unsafe files
    ("truncated NeuronSet", T("--neurons", "{truncated.safetensors}", **NEFT),
     r"not a readable safetensors file .*truncated"),
    ("truncated adapter", [*MERGE, "--adapter", "{adapter-truncated}"],
     r"adapter_model\.safetensors is not a readable safetensors file .*truncated"),
    ("truncated model weights", T(model="{corrupt-model}"),
     r"cannot load model .*; it may be truncated or corrupted"),
    ("--neurons file that is not safetensors", T("--neurons", "{text.safetensors}", **NEFT),
     r"text\.safetensors is not a readable safetensors file"),
    ("pickle named .safetensors", T("--neurons", "{pickle.safetensors}", **NEFT),
     r"is a torch\.save \(zip \+ pickle\) file, not safetensors; neft never unpickles"),
    ("model with pickle weights only", T(model="{pickle-model}"),
     r"has only pickle weights \(pytorch_model\.bin\), which neft does not load"),
    ("adapter folder without adapter_config.json", [*MERGE, "--adapter", "{adapter-no-config}"],
     r"has no adapter_config\.json; is it a neft adapter folder"),
    ("adapter_config.json that is not JSON", [*MERGE, "--adapter", "{adapter-bad-json}"],
     r"adapter_config\.json is not valid JSON .*the adapter is damaged"),
    ("an adapter file instead of its folder", [*MERGE, "--adapter", "{set2.safetensors}"],
     r"adapter folder .*set2\.safetensors is a file, not a folder"),
    ("eval with an unknown dtype", ["eval", "--model", "{m}", "--data", "{d}", "--dtype",
                                    "half8"],
     r"unknown dtype 'half8': use float32, bfloat16, float16 or auto"),
    ("eval comet without its checkpoint", ["eval", "--model", "{m}", "--data", "{d}",
                                           "--metrics", "bleu,comet"],
     r"metric comet needs a local COMET checkpoint: pass --comet_model PATH"),
    ("eval --base_model without drift", ["eval", "--model", "{m}", "--data", "{d}",
                                         "--base_model", "{m}"],
     r"--base_model is not used here \(the default metrics \(bleu,chrf,rouge\): no drift\): "
     r"drop it"),
    ("eval --comet_model without comet", ["eval", "--model", "{m}", "--data", "{d}",
                                          "--metrics", "bleu", "--comet_model", "{d}"],
     r"--comet_model is not used here \(--metrics bleu: no comet\)"),
    ("eval generation flags with loss only", ["eval", "--model", "{m}", "--data", "{d}",
                                              "--metrics", "loss", "--max_new_tokens", "8"],
     r"--max_new_tokens is not used here \(--metrics loss: no answer is generated\)"),
    ("eval --max_length without loss or drift", ["eval", "--model", "{m}", "--data", "{d}",
                                                 "--max_length", "64"],
     r"--max_length is not used here \(the default metrics \(bleu,chrf,rouge\): neither "
     r"loss nor drift\)"),
    ("LoRA adapter given to merge", [*MERGE, "--adapter", "{lora}"],
     r"is a LORA adapter, not a neft one"),
    # output folders
    ("output_dir holding another run", T(out="{adapter}"),
     r"already holds a run; pass --resume to continue it or --overwrite to replace it"),
    ("--overwrite of the folder that holds the data",
     T("--overwrite", out="{run-with-data}", data="{run-with-data}/mine.jsonl"),
     r"--train_file .*mine\.jsonl lies inside output_dir .*run-with-data, which --overwrite "
     r"clears; move it out"),
    ("--overwrite with bad input keeps the old run",
     T("--overwrite", out="{adapter}", data="{malformed.jsonl}"), r"malformed JSON"),
    ("--resume with other options", T("--resume", "--seed", "7", out="{adapter}"),
     r"--resume: option \w+ differs from the run in .*; resume with the same options"),
    ("--overwrite of a folder that is no run", T("--overwrite", out="{notes}"),
     r"holds no neft run; choose another --output_dir \(--overwrite replaces neft runs only"),
    ("damaged neft_run.json", T("--resume", out="{damaged-run}"),
     r"neft_run\.json is damaged.*pass --overwrite"),
    ("output_dir that is a file", T(out="{a-file}"),
     r"output_dir .*a-file is a file; pass a folder"),
    ("merge into a non-empty folder", [*MERGE[:-1], "{notes}", "--adapter", "{adapter}"],
     r"is not empty; pass --overwrite to replace it"),
    ("merge --overwrite of the adapter", [*MERGE[:-1], "{adapter}", "--adapter", "{adapter}",
                                          "--overwrite"],
     r"which is being merged from; write the export to a new folder"),
    ("merge --overwrite of other files", [*MERGE[:-1], "{notes}", "--adapter", "{adapter}",
                                          "--overwrite"],
     r"is not a folder that neft export or neft merge wrote; --overwrite replaces only"),
    ("merge --overwrite of a model it did not write", [*MERGE[:-1], "{m2}", "--adapter",
                                                       "{adapter}", "--overwrite"],
     r"model2 is not a folder that neft export or neft merge wrote"),
    ("select --output that is a folder", [*SELECT[:-2], "{notes}", "--neurons", "3"],
     r"notes is a folder; give a file name"),
    ("eval --output_file that is a folder", ["eval", "--model", "{m}", "--data", "{d}",
                                             "--output_file", "{notes}"],
     r"output_file .*notes is a folder"),
    # outputs that exist, or cannot be written (checked before any work)
    ("select --output over an existing file", [*SELECT[:-2], "{set2.safetensors}", "--neurons",
                                               "3"],
     r"output .*set2\.safetensors already exists; pass --overwrite to replace it"),
    ("eval --output_file over an existing file", ["eval", "--model", "{m}", "--data", "{d}",
                                                  "--output_file", "{a-file}"],
     r"output_file .*a-file already exists; pass --overwrite"),
    ("eval --output_file under a file", ["eval", "--model", "{m}", "--data", "{d}",
                                         "--output_file", "{a-file}/eval.json"],
     r"a-file is a file, not a folder; choose another path"),
    ("analyze over an earlier result", ["analyze", "distribution", "{set2.safetensors}",
                                        "--output_dir", "{analyze-out}"],
     r"distribution\.json already exists; pass --overwrite"),
    ("train --output_dir under a file", T(out="{a-file}/run"),
     r"a-file is a file, not a folder"),
    # the model's positions
    ("eval past the model's positions", ["eval", "--model", "{gpt2-128}", "--data", "{d}",
                                         "--max_new_tokens", "200"],
     r"the longest prompt \(\d+ tokens\) \+ max_new_tokens \(200\) is \d+ tokens but the "
     r"model has 128 positions \(n_positions in its config\); pass --max_new_tokens \d+ or "
     r"less"),
    ("eval prompts past the model's positions", ["eval", "--model", "{gpt2-32}", "--data",
                                                 "{d}"],
     r"the longest prompt .* but the model has 32 positions .*the prompt alone fills them"),
    ("train examples past the model's positions", T(model="{gpt2-32}"),
     r"the longest training example \(max_length 64\) is \d+ tokens but the model has 32 "
     r"positions \(n_positions in its config\); pass --max_length 32 or less"),
    ("select data past the model's positions",
     ["select", "--model", "{gpt2-32}", "--scorer", "gradient", "--data", "{d}", "--neurons",
      "3", "--max_length", "64", "--output", "{out}", "--quiet"],
     r"the longest example \(max_length 64\) is 64 tokens but the model has 32 positions"),
    ("select avoid's data past the model's positions",
     ["select", "--model", "{gpt2-32}", "--avoid", "massive", "--data", "{d}", "--neurons",
      "3", "--max_length", "64", "--output", "{out}", "--quiet"],
     r"the longest example \(max_length 64\) is 64 tokens but the model has 32 positions"),
    # numbers that are no numbers
    ("select --percent nan", [*SELECT, "--percent", "nan"],
     r"argument --percent: must be a finite number, not 'nan'"),
    ("select --percent inf", [*SELECT, "--percent", "inf"],
     r"argument --percent: must be a finite number, not 'inf'"),
    ("train --learning_rate nan", T("--learning_rate", "nan"),
     r"argument --learning_rate: must be a finite number"),
    # the base an adapter recorded
    ("adapter whose recorded base is gone", ["eval", "--adapter", "{adapter-moved-base}",
                                             "--data", "{d}"],
     r"adapter .*adapter-moved-base names its base model .*base-that-moved.* \(base_model_"
     r"name_or_path in its adapter_config\.json\), which cannot be loaded: .*pass the base "
     r"model with --model"),
    # options, flags and YAML
    ("broken YAML", ["train", "--config", "{broken.yaml}", "--train_file", "{d}"],
     r"broken\.yaml:3: not valid YAML \(.*\); fix that line"),
    ("duplicate YAML key", ["train", "--config", "{twice.yaml}", "--train_file", "{d}"],
     r"twice\.yaml:3: option 'learning_rate' is given twice \(first on line 1\); keep one"),
    ("a folder as --config", ["train", "--config", "{config-folder}", "--train_file", "{d}"],
     r"config file .*config-folder is a folder; pass the YAML file itself"),
    ("unknown YAML key", ["train", "--config", "{typo.yaml}", "--train_file", "{d}"],
     r"typo\.yaml: unknown option 'learning_rte'; did you mean 'learning_rate'\?"),
    ("YAML value of the wrong type", ["train", "--config", "{wrong-type.yaml}",
                                      "--train_file", "{d}"],
     r"option overwrite must be true or false, not 'maybe'"),
    ("YAML key without a value", ["train", "--config", "{empty-value.yaml}", "--train_file",
                                  "{d}"],
     r"option learning_rate has no value; give one, or drop it for the default \(0\.0005\)"),
    ("YAML fraction for a count", ["train", "--config", "{fraction.yaml}", "--train_file", "{d}"],
     r"option max_steps must be a whole number, not 2\.5"),
    ("missing YAML file", ["eval", "--config", "{root}/nope.yaml", "--data", "{d}"],
     r"config file .*nope\.yaml does not exist"),
    ("unknown flag", T("--learning_rte", "0.1"),
     r"unrecognized arguments: --learning_rte 0\.1; did you mean --learning_rate\?"),
    ("flag value of the wrong type", T("--seed", "abc"),
     r"argument --seed: invalid int value: 'abc'"),
    ("max_steps 0", T(steps="0"), r"max_steps 0 trains nothing"),
    ("negative learning rate", T("--learning_rate", "-1e-4"),
     r"learning_rate must not be negative"),
    ("zero batch size", T("--per_device_train_batch_size", "0"),
     r"per_device_train_batch_size must be at least 1"),
    ("unknown method", T(method="dora"), r"method 'dora' is not known"),
    ("--neurons with a method that ignores it",
     T("--neurons", "{set2.safetensors}", method="lora", budget=()),
     r"neurons is used by method neft only"),
    ("unknown language code", T("--target_lang", "xx"), r"unknown language code 'xx'"),
    ("unknown metric", ["eval", "--model", "{m}", "--data", "{d}", "--metrics", "blue"],
     r"unknown metric blue"),
    # models
    ("model path that does not exist", T(model="{root}/no-model"),
     r"model path '.*no-model' does not exist: pass an existing model directory"),
    ("model folder without config.json", T(model="{notes}"),
     r"has no config\.json: pass a directory written by save_pretrained"),
    ("model given as a file", T(model="{a-file}"),
     r"is a file; pass the folder that holds its config\.json"),
]


def snapshot(*roots: str) -> dict[str, tuple[int, int]]:
    """Every file under the roots with its size and modification time."""
    found = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                stat = os.stat(path)
                found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


def fill(argv: list[str], names: dict[str, str]) -> list[str]:
    """'{adapter}' -> the world's adapter path, and so on."""
    return [re.sub(r"\{([^{}]+)\}", lambda m: names[m.group(1)], a) for a in argv]


def run_cli(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # argparse's usage errors exit from inside the parser
        return int(exc.code or 0)


@pytest.mark.parametrize("argv, message", [(a, m) for _, a, m in CASES],
                         ids=[c for c, _, _ in CASES])
def test_bad_input_is_one_line_status_2_and_writes_nothing(argv, message, world, tmp_path,
                                                            capsys) -> None:
    out = tmp_path / "out"
    args = fill(argv, {**world, "out": str(out)})
    roots = (world["root"], world["m"], world["d"])
    before = snapshot(*roots)
    code = run_cli(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"neft {argv[0]}: error: ")
    assert re.search(message, errors[0]), errors[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert snapshot(*roots) == before, "a file was written or changed"


def test_debug_shows_the_traceback_before_or_after_the_command(world) -> None:
    argv = ["train", "--train_file", world["d"], "--method", "dora"]
    for args in (["--debug", *argv], [argv[0], "--debug", *argv[1:]]):
        with pytest.raises(NeftError, match="method 'dora' is not known"):
            main(args)


def test_hub_names_fail_fast_offline(world, monkeypatch, capsys) -> None:
    """Offline, a name that is not a local path is not retried against the Hub for a
    minute: it fails at once, saying how to name a local folder."""
    import neft.core.loading

    monkeypatch.setattr(neft.core.loading, "hub_reachable", lambda timeout=3.0: False)
    names = {**world, "out": world["root"] + "/x"}
    assert run_cli(fill(T(model="no-such-model-here"), names)) == 2
    assert "is not a local folder and the Hugging Face Hub cannot be reached" in (
        capsys.readouterr().err)
    assert run_cli(fill(T(data="no_such_dataset"), names)) == 2
    assert "not a local file or folder, and the Hugging Face Hub cannot be reached" in (
        capsys.readouterr().err)


def test_data_gettext_never_replaces_other_records(tmp_path) -> None:
    from neft.cli.commands.data import check_output

    records = {"train": [{"source": "a b", "target": "c d"}]}
    (tmp_path / "train.jsonl").write_text('{"source": "mine", "target": "keep"}\n')
    with pytest.raises(NeftError, match="already exists with other records; pass --overwrite"):
        check_output(str(tmp_path), records, overwrite=False)
    (tmp_path / "train.jsonl").write_text('{"source": "a b", "target": "c d"}\n')
    check_output(str(tmp_path), records, overwrite=False)  # the same harvest again: fine


def test_yaml_values_are_read_strictly_but_keep_their_meaning() -> None:
    """A quoted 'false' is false (not truthy text), YAML's true for a text option is
    'true', a whole float is an int; anything else is an error (see CASES)."""
    config = from_dict(TrainConfig, {"train_file": "x", "overwrite": "false", "bf16": True,
                                     "max_steps": 3.0, "seed": "7", "model": 123})
    assert config.overwrite is False and config.bf16 == "true"
    assert (config.max_steps, config.seed, config.model) == (3, 7, "123")


def test_a_byte_order_mark_is_not_a_malformed_line(tmp_path) -> None:
    """Windows editors start UTF-8 files with a BOM; it is not part of the first record."""
    from neft.data import load_records

    record = {"source": "the file", "target": "die Datei", "tgt_lang": "de"}
    (tmp_path / "bom.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8-sig")
    (tmp_path / "bom.json").write_text(json.dumps([record]), encoding="utf-8-sig")
    (tmp_path / "bom.csv").write_text("source,target,tgt_lang\nthe file,die Datei,de\n",
                                      encoding="utf-8-sig")
    for name in ("bom.jsonl", "bom.json", "bom.csv"):
        assert load_records(str(tmp_path / name), task="translation")[0]["source"] == "the file"


def test_overwrite_replaces_an_existing_output(world, tmp_path, capsys) -> None:
    """--overwrite is the way through the refusals above (select and eval)."""
    out = tmp_path / "set.safetensors"
    out.write_text("old")
    argv = fill([*SELECT[:-2], str(out), "--neurons", "3"], world)
    assert run_cli(argv) == 2
    assert out.read_text() == "old"
    assert run_cli([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    from neft.core.neuron_set import NeuronSet

    assert NeuronSet.load(out).num_neurons() == 3


def test_a_logger_that_is_not_installed_fails_before_the_folder_is_touched(
        world, monkeypatch, capsys) -> None:
    import transformers.integrations

    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations",
                        lambda: [])
    before = snapshot(world["root"])
    args = fill(T("--overwrite", "--report_to", "tensorboard", out="{adapter}"), world)
    assert run_cli(args) == 2
    assert "report_to tensorboard needs its package, which is not installed: pip install " \
        "tensorboard, or pass --report_to none" in capsys.readouterr().err
    assert snapshot(world["root"]) == before
