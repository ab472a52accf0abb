"""neft.data: records, templates, tokenization, collator, gettext harvest. No downloads."""

from __future__ import annotations

import json
import math
import os
import struct

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from neft.cli import main as cli_main
from neft.data import (
    DataCollator,
    build_dataset,
    encode_prompt,
    format_length_stats,
    harvest_gettext,
    language_name,
    length_stats,
    load_records,
    placeholder_survival,
    placeholders,
    render_example,
    tokenize_example,
    write_jsonl,
)
from neft.errors import NeftError

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
WORDS = ("hello world translate the following text from english to german . hallo welt "
         "a b c d e f g h i j k l m n o p q r s t u v w x y z").split()


def make_tokenizer(chat: bool = False, adds_bos: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory: one token per word or punctuation mark."""
    specials = ["<pad>", "</s>", "<s>", "[UNK]", "<|user|>", "<|assistant|>"]
    vocab = {word: i for i, word in enumerate(dict.fromkeys(specials + WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", bos_token="<s>",
        unk_token="[UNK]", chat_template=CHAT_TEMPLATE if chat else None)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- languages


def test_language_names():
    assert language_name("de") == "German"
    assert language_name("zh_CN") == "Chinese"
    assert language_name("zh-TW") == "Traditional Chinese"
    assert language_name("pt_BR") == "Brazilian Portuguese"
    assert language_name("German") == "German"
    with pytest.raises(NeftError, match="unknown language code 'xx'"):
        language_name("xx")


# ----------------------------------------------------------------------------- records


def test_load_jsonl_field_map_and_limit(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"translation": {"en": f"s{i}", "de": f"t{i}"}, "id": i} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    records = load_records(str(path), field_map={"translation.en": "source",
                                                 "translation.de": "target"},
                           limit=3, task="translation")
    assert [r["source"] for r in records] == ["s0", "s1", "s2"]
    assert (records[0]["id"], records[0]["target"]) == (0, "t0")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"source": "a", "target": "b"}\n\n{"source": "c", "target": \n')
    with pytest.raises(NeftError, match=rf"{path}:3: malformed JSON"):
        load_records(str(path))


def test_missing_field_names_field_and_fields_present(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"en": "a", "de": "b"}\n')
    with pytest.raises(NeftError, match=r"d.jsonl:1: missing field 'source'.*fields present: "
                                        r"en, de"):
        load_records(str(path), task="translation")
    with pytest.raises(NeftError, match=r"no field 'fr' to map to 'target'; fields present"):
        load_records(str(path), field_map={"en": "source", "fr": "target"})


def test_load_other_formats_and_split_folder(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,completion\nx,y\n")
    (tmp_path / "a.tsv").write_text("prompt\tcompletion\nx\ty, z\n")
    (tmp_path / "a.json").write_text(json.dumps([{"prompt": "x", "completion": "y"}]))
    assert load_records(str(tmp_path / "a.csv"), task="completion") == [
        {"prompt": "x", "completion": "y"}]
    assert load_records(str(tmp_path / "a.tsv"))[0]["completion"] == "y, z"
    # TSV has no quoting: a sentence's quotes are its own, an unbalanced one included
    (tmp_path / "q.tsv").write_text('source\ttarget\n"Hello," she said.\t"Hallo", sagte sie.\n'
                                    'A "start only\tEin "Anfang\nNext\tWeiter\n')
    rows = load_records(str(tmp_path / "q.tsv"))
    assert [r["source"] for r in rows] == ['"Hello," she said.', 'A "start only', "Next"]
    assert rows[1]["target"] == 'Ein "Anfang'
    assert load_records(str(tmp_path / "a.json"))[0]["prompt"] == "x"
    pq.write_table(pa.Table.from_pylist([{"prompt": "x", "completion": "y"}]),
                   str(tmp_path / "a.parquet"))
    assert load_records(str(tmp_path / "a.parquet")) == [{"prompt": "x", "completion": "y"}]
    write_jsonl(str(tmp_path / "split" / "dev.jsonl"), [{"prompt": "p", "completion": "c"}])
    assert load_records(str(tmp_path / "split"), split="dev") == [{"prompt": "p",
                                                                   "completion": "c"}]
    assert sorted(os.listdir(tmp_path / "split")) == ["dev.jsonl"]  # no temp file left
    with pytest.raises(NeftError, match="has no test.jsonl"):
        load_records(str(tmp_path / "split"), split="test")


def test_load_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(NeftError, match="no records"):
        load_records(str(tmp_path / "empty.jsonl"))
    with pytest.raises(NeftError, match="does not exist"):
        load_records(str(tmp_path / "missing.jsonl"))
    with pytest.raises(NeftError, match="needs a split"):
        load_records("some-org/some-dataset")
    with pytest.raises(NeftError, match="unknown task"):
        load_records(str(tmp_path / "empty.jsonl"), task="chat")


# ----------------------------------------------------------------------------- templates

PAIR = {"source": "hello world", "target": "hallo welt"}


def test_plain_templates(tok):
    assert render_example(PAIR, "translation", tok, "plain", tgt_lang="de") == (
        "### Instruction:\nTranslate the following text from English to German.\n\n"
        "### Input:\nhello world\n\n### Response:\n", "hallo welt")
    summary = {"source": "long text", "target": "kurz", "src_lang": "en", "tgt_lang": "de"}
    assert render_example(summary, "summarization", tok, "plain")[0] == (
        "### Instruction:\nSummarize the following English text in German.\n\n"
        "### Input:\nlong text\n\n### Response:\n")
    assert render_example({"source": "x", "target": "y"}, "summarization", tok, "plain")[0] \
        .startswith("### Instruction:\nSummarize the following English text.\n\n")
    alpaca = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    assert render_example(alpaca, "instruction", tok, "plain") == (
        "### Instruction:\nName a colour.\n\n### Response:\n", "Blue.")


def test_llama2_templates_are_the_papers(tok):
    record = {**PAIR, "src_lang": "en", "tgt_lang": "zh"}
    assert render_example(record, "translation", tok, "llama2") == (
        "[INST] Translate the following text from English to Chinese. hello world [/INST]",
        " hallo welt")
    assert render_example(record, "summarization", tok, "llama2")[0] == (
        "[INST] Given the below English article, generate a summary in Chinese.\n"
        "Article: hello world [/INST]")


def test_chat_and_auto_templates():
    chat = make_tokenizer(chat=True)
    expected = ("<|user|>Translate the following text from English to French.\nhello world\n"
                "<|assistant|>", "hallo welt")
    assert render_example(PAIR, "translation", chat, "chat", tgt_lang="fr") == expected
    assert render_example(PAIR, "translation", chat, "auto", tgt_lang="fr") == expected
    plain = make_tokenizer()
    assert render_example(PAIR, "translation", plain, "auto", tgt_lang="fr")[0].startswith("###")
    with pytest.raises(NeftError, match="no chat template"):
        render_example(PAIR, "translation", plain, "chat", tgt_lang="fr")


def test_template_languages_and_completion(tok):
    record = {**PAIR, "src_lang": "de", "tgt_lang": "en"}  # the record's own fields win
    assert "from German to English." in render_example(record, "translation", tok, "plain",
                                                       src_lang="en", tgt_lang="fr")[0]
    with pytest.raises(NeftError, match="needs a target language"):
        render_example(PAIR, "translation", tok, "plain")
    assert render_example({"prompt": "2+2=", "completion": "4"}, "completion", tok,
                          "chat") == ("2+2=", "4")


# ----------------------------------------------------------------------------- tokenization


def test_tokenize_masks_prompt_by_length_and_ends_with_eos(tok):
    example = tokenize_example(tok, "translate hello world", "hallo welt", max_length=64)
    prompt, target = ids(tok, "translate hello world"), ids(tok, "hallo welt")
    assert example["input_ids"] == prompt + target + [tok.eos_token_id]
    assert example["labels"] == [-100] * len(prompt) + target + [tok.eos_token_id]
    assert example["attention_mask"] == [1] * (len(prompt) + len(target) + 1)


def test_tokenize_eos_is_learned_even_when_pad_is_eos():
    same = make_tokenizer()
    same.pad_token = same.eos_token  # SmolLM2's case
    example = tokenize_example(same, "hello", "hallo", max_length=16)
    assert example["labels"][-1] == same.eos_token_id


def test_tokenize_bos_added_once():
    bos_tok = make_tokenizer(adds_bos=True)
    bos = bos_tok.bos_token_id
    assert tokenize_example(bos_tok, "hello", "hallo", 16)["input_ids"][:2] == [
        bos, ids(bos_tok, "hello")[0]]
    assert tokenize_example(bos_tok, "<s> hello", "hallo", 16)["input_ids"].count(bos) == 1
    assert encode_prompt(bos_tok, "hello") == [bos] + ids(bos_tok, "hello")
    assert encode_prompt(make_tokenizer(), "hello") == ids(bos_tok, "hello")


def test_truncation_cuts_prompt_middle_first(tok):
    prompt = " ".join("abcdefghijklmnopqrst")  # 20 tokens
    example = tokenize_example(tok, prompt, "hallo welt", max_length=13)
    p = ids(tok, prompt)
    assert example["input_ids"] == p[:5] + p[-5:] + ids(tok, "hallo welt") + [tok.eos_token_id]
    assert example["labels"].count(-100) == 10


def test_truncation_keeps_target_tokens(tok):
    for max_length in (2, 3, 8, 15):
        for prompt_len, target_len in ((1, 30), (10, 30), (30, 30), (30, 2)):
            prompt, target = " ".join(["a"] * prompt_len), " ".join(["b"] * target_len)
            example = tokenize_example(tok, prompt, target, max_length)
            n_target = sum(label != -100 for label in example["labels"])
            assert len(example["input_ids"]) <= max_length
            assert n_target >= min(target_len + 1, max_length - max_length // 2)
            if n_target <= target_len:  # target cut: it did not end, so no eos
                assert tok.eos_token_id not in example["input_ids"]
    with pytest.raises(NeftError, match="max_length 1 is too small"):
        tokenize_example(tok, "a", "b", 1)


def test_build_dataset_and_length_stats(tok):
    records = [{"source": " ".join(["a"] * n), "target": "b c", "tgt_lang": "de"}
               for n in (1, 2, 40)]
    dataset = build_dataset(records, tok, "translation", max_length=32, template="plain")
    assert len(dataset) == 3 and all(len(ex["input_ids"]) <= 32 for ex in dataset)
    stats = length_stats(dataset)
    assert stats["examples"] == 3 and stats["truncated"] == 1
    assert stats["target"] == {"min": 2, "mean": 2.0, "p95": 2, "max": 2}
    assert stats["total"]["max"] == stats["prompt"]["max"] + 3
    assert stats["tokens"] == sum(len(ex["input_ids"]) for ex in dataset)
    assert "1 truncated to max_length 32" in format_length_stats(stats)
    with pytest.raises(NeftError, match="record 1: missing field 'target'"):
        build_dataset([records[0], {"source": "x"}], tok, "translation", template="plain")


def test_collator_pads_and_masks_exactly_the_prompt(tok):
    examples = [tokenize_example(tok, "hello world", "hallo", 32),
                tokenize_example(tok, "translate the following text", "hallo welt", 32)]
    batch = DataCollator(tok.pad_token_id)(examples)
    assert batch["input_ids"].shape == (2, 7) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0].tolist()[4:] == [tok.pad_token_id] * 3
    assert batch["attention_mask"].tolist() == [[1] * 4 + [0] * 3, [1] * 7]
    assert batch["labels"].tolist() == [
        [-100, -100] + ids(tok, "hallo") + [tok.eos_token_id] + [-100] * 3,
        [-100] * 4 + ids(tok, "hallo welt") + [tok.eos_token_id]]
    as_tensors = [{k: torch.tensor(v) for k, v in ex.items()} for ex in examples]
    padded = DataCollator(tok.pad_token_id, pad_to_multiple_of=8)(as_tensors)
    assert padded["labels"].shape == (2, 8)
    with pytest.raises(NeftError, match="no pad token"):
        DataCollator(None)


def test_dataset_trains_with_transformers_trainer(tok, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    dataset = build_dataset([PAIR] * 4, tok, "translation", max_length=32, template="plain",
                            tgt_lang="de")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                             max_steps=2, report_to=[], save_strategy="no", use_cpu=True,
                             logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollator(tok.pad_token_id))
    result = trainer.train()
    assert math.isfinite(result.training_loss)


@pytest.mark.integration
def test_smollm2_chat_prompt_and_eos():
    from transformers import AutoTokenizer

    from neft.core.loading import ensure_embedded_model

    smol = AutoTokenizer.from_pretrained(ensure_embedded_model())
    prompt, target = render_example(PAIR, "translation", smol, tgt_lang="de")
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nTranslate the following text from English to "
        "German.\nhello world<|im_end|>\n<|im_start|>assistant\n")
    example = tokenize_example(smol, prompt, target, 256)
    assert example["input_ids"][-1] == smol.eos_token_id == smol.pad_token_id == 2
    assert example["labels"].count(-100) == len(smol(prompt)["input_ids"])  # no BOS added
    assert smol.decode([t for t in example["labels"] if t != -100]) == "hallo welt<|im_end|>"


# ----------------------------------------------------------------------------- placeholders


def test_placeholders():
    assert placeholders("%s: cannot open %1$s (%d%%), {name} {0} {} %(file)s %-10lu %.*s") == [
        "%s", "%1$s", "%d", "{name}", "{0}", "{}", "%(file)s", "%-10lu", "%.*s"]
    assert placeholders("50% of {{literal}} 100%") == []


def test_placeholder_survival():
    refs = ["%s und %d", "Datei {name}", "keine"]
    hyps = ["%s and", "file {name} {x}", "none %s"]
    assert placeholder_survival(hyps, refs) == pytest.approx(2 / 3)
    assert math.isnan(placeholder_survival(["x"], ["y"]))
    with pytest.raises(NeftError, match="2 hypotheses but 1 references"):
        placeholder_survival(["a", "b"], ["c"])


# ----------------------------------------------------------------------------- gettext

HEADER = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"


def write_mo(path, messages: dict[str, str]) -> None:
    """A GNU .mo catalog: header, then sorted msgid and msgstr tables, then the strings."""
    entries = sorted((k.encode(), v.encode()) for k, v in {"": HEADER, **messages}.items())
    n = len(entries)
    originals, translations = b"", b""
    orig_table, trans_table = [], []
    for key, value in entries:
        orig_table.append((len(key), len(originals)))
        originals += key + b"\0"
        trans_table.append((len(value), len(translations)))
        translations += value + b"\0"
    data_at = 28 + 16 * n
    out = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, data_at)
    out += b"".join(struct.pack("<2I", size, data_at + at) for size, at in orig_table)
    out += b"".join(struct.pack("<2I", size, data_at + len(originals) + at)
                    for size, at in trans_table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out + originals + translations)


@pytest.fixture
def locale_dir(tmp_path):
    root = tmp_path / "locale"
    folder = root / "de" / "LC_MESSAGES"
    many = {f"Cannot open file number {i} for %s": f"Kann Datei Nummer {i} nicht für %s öffnen"
            for i in range(40)}
    write_mo(folder / "alpha.mo", {
        **many,
        "Save the current file now": "Aktuelle Datei jetzt speichern",
        "Cannot read the input file": "Kann die Eingabedatei nicht lesen",
        "cannot read the input file.": "kann die Eingabedatei nicht lesen.",
        "Copy %2$s to the place %1$s": "Kopiere %2$s an den Ort %1$s",
        "  Show {count} hidden items here  \n": "  {count} versteckte Objekte hier zeigen  \n",
        "Too short text": "Zu kurz",  # 3 words
        "Identical text is dropped here": "Identical text is dropped here",
        "Empty translation is dropped here": "",
        "Two lines\nare dropped in any case": "Zwei Zeilen\nwerden verworfen",
        "Lost placeholder %s is dropped": "Verlorener Platzhalter wird verworfen",
        "One file was deleted now\x00%d files were deleted now": "Eine\x00%d Dateien",
        "menu\x04Open the file right now": "Datei jetzt öffnen",
    })
    write_mo(folder / "beta.mo", {"Save the current file now": "Die Datei jetzt speichern"})
    write_mo(folder / "gamma.mo", {"Save the current file now": "Die Datei jetzt speichern"})
    write_mo(root / "fr" / "LC_MESSAGES" / "alpha.mo", {"Open the file now": "Ouvrir"})
    return root


def test_harvest_gettext(locale_dir):
    splits = harvest_gettext("de", locale_dir=str(locale_dir), dev_size=5, test_size=5)
    assert {k: len(v) >= 5 for k, v in splits.items()} == {"train": True, "dev": True,
                                                           "test": True}
    records = [r for split in splits.values() for r in split]
    by_source = {r["source"]: r for r in records}
    assert len(by_source) == len(records) == 40 + 5  # one record per source; the rest dropped
    split_of = {r["source"]: name for name, split in splits.items() for r in split}
    assert split_of["Cannot read the input file"] == split_of["cannot read the input file."]
    assert by_source["Save the current file now"]["target"] == "Die Datei jetzt speichern"
    assert by_source["Save the current file now"]["domain"] == "beta"
    assert by_source["Copy %2$s to the place %1$s"]["target"] == "Kopiere %2$s an den Ort %1$s"
    assert by_source["Show {count} hidden items here"]["target"] == \
        "{count} versteckte Objekte hier zeigen"
    first = by_source["Cannot open file number 0 for %s"]
    assert set(first) == {"id", "kind", "src_lang", "tgt_lang", "source", "target", "domain"}
    assert (first["kind"], first["src_lang"], first["tgt_lang"]) == ("gettext", "en", "de")
    again = harvest_gettext("de", locale_dir=str(locale_dir), dev_size=5, test_size=5)
    assert again == splits
    other = harvest_gettext("de", locale_dir=str(locale_dir), dev_size=5, test_size=5, seed=1)
    assert other["test"] != splits["test"]


def test_harvest_gettext_errors(locale_dir):
    with pytest.raises(NeftError, match=r"no gettext catalogs for 'es'.*: de, fr"):
        harvest_gettext("es", locale_dir=str(locale_dir))
    with pytest.raises(NeftError, match="none left for train"):
        harvest_gettext("fr", locale_dir=str(locale_dir), min_words=1)


def test_cli_data_gettext(locale_dir, tmp_path, capsys):
    out = tmp_path / "out"
    status = cli_main(["data", "gettext", "--target", "de", "--locale_dir", str(locale_dir),
                       "--output_dir", str(out), "--dev_size", "3", "--test_size", "4"])
    assert status == 0
    assert sorted(os.listdir(out)) == ["dev.jsonl", "test.jsonl", "train.jsonl"]
    test = load_records(str(out), split="test", task="translation")
    assert len(test) >= 4
    assert "en->de: train" in capsys.readouterr().out
    assert cli_main(["data", "gettext", "--target", "xx", "--locale_dir", str(locale_dir)]) == 2
