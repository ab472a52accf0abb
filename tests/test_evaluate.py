"""Evaluation: metric wrappers, paired bootstrap, batched generation, adapters, `neft eval`."""

from __future__ import annotations

import importlib.util
import json

import pytest
import sacrebleu
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from neft.cli import main as cli_main
from neft.errors import NeftError
from neft.evaluate import (
    StopAtNewline,
    end_of_turn_token_id,
    evaluate_model,
    generate,
    load_for_eval,
    newline_token_ids,
    stop_token_ids,
)
from neft.evaluate.generation import _finish, _generate
from neft.evaluate.metrics import (
    RougeTokenizer,
    bleu_tokenizer,
    paired_bootstrap,
    parse_metrics,
    score,
)

HYPS = ["The cat sat on the mat.", "It is raining in Berlin today.",
        "Open the file %s for reading."]
REFS = ["The cat sat on a mat.", "Today it is raining in Berlin.", "Open file %s for reading."]
ZH_HYPS = ["我喜欢吃苹果。", "今天天气很好。"]
ZH_REFS = ["我很喜欢吃苹果。", "今天的天气很好。"]

# ----------------------------------------------------------------------------- metrics


def test_bleu_and_chrf_are_sacrebleus():
    result = score(HYPS, REFS, "de", "bleu,chrf")
    assert result["scores"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert result["scores"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert result["scores"]["bleu"] == pytest.approx(56.14596252200654)  # sacrebleu 2.6
    assert "tok:13a" in result["signatures"]["bleu"]
    assert "nc:6" in result["signatures"]["chrf"]


def test_chinese_bleu_uses_the_zh_tokenizer():
    zh = score(ZH_HYPS, ZH_REFS, "zh_CN", ["bleu"])
    assert "tok:zh" in zh["signatures"]["bleu"]
    expected = sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="zh").score
    assert zh["scores"]["bleu"] == pytest.approx(expected)
    assert zh["scores"]["bleu"] > 50 > score(ZH_HYPS, ZH_REFS, "en", ["bleu"])["scores"]["bleu"]


@pytest.mark.parametrize("lang, tokenizer", [("zh", "zh"), ("zh-TW", "zh"), ("ja", "char"),
                                             ("th", "char"), ("de", "13a"), (None, "13a")])
def test_bleu_tokenizer_by_target_language(lang, tokenizer):
    assert bleu_tokenizer(lang) == tokenizer


def test_rouge_scores_chinese_per_character():
    from rouge_score.rouge_scorer import RougeScorer

    # 我 喜 欢 猫 vs 我 喜 欢 狗: unigrams 3/4, bigrams 2/3, LCS 3/4.
    scores = score(["我喜欢猫。"], ["我喜欢狗。"], "zh", ["rouge"])["scores"]
    assert scores == pytest.approx({"rouge1": 75.0, "rouge2": 200 / 3, "rougeL": 75.0})
    assert RougeScorer(["rouge1"]).score("我喜欢狗", "我喜欢猫")["rouge1"].fmeasure == 0.0


def test_rouge_tokenizer_keeps_non_latin_words():
    assert RougeTokenizer().tokenize("Größe ändern: 한국어 テスト!") == [
        "größe", "ändern", "한국어", "テ", "ス", "ト"]


def test_placeholder_survival_in_percent():
    hyps = ["Datei %s nicht gefunden", "%d von %d Dateien", "{name} fehlt"]
    refs = ["Datei %s nicht gefunden", "%d von %d Dateien kopiert", "Es fehlt {name} in {dir}"]
    result = score(hyps, refs, "de", "placeholders")
    assert result["scores"] == {"placeholder_survival": pytest.approx(100 * 4 / 5)}
    assert score(["a"], ["b c"], metrics="placeholders")["scores"]["placeholder_survival"] is None


def test_default_metrics_add_placeholders_only_when_references_have_them():
    assert parse_metrics(None, ["Datei lesen"]) == ["bleu", "chrf", "rouge"]
    assert parse_metrics(None, ["Datei %s lesen"])[-1] == "placeholders"
    assert parse_metrics(" BLEU, chrf ,bleu") == ["bleu", "chrf"]


def test_paired_bootstrap_identical_systems():
    result = paired_bootstrap(HYPS, HYPS, REFS, metric="chrf", n=200, seed=1)
    assert result["delta"] == 0.0
    assert result["interval"] == [0.0, 0.0]
    assert result["p_value"] == 1.0


@pytest.mark.parametrize("metric", ["bleu", "chrf", "rougeL"])
def test_paired_bootstrap_is_antisymmetric_and_sees_a_clear_winner(metric):
    refs = [f"message number {i} was sent to the server" for i in range(40)]
    good = [ref.replace("sent", "posted") if i % 3 else ref for i, ref in enumerate(refs)]
    bad = [f"number {i} server" for i in range(40)]
    ab = paired_bootstrap(good, bad, refs, metric=metric, n=300, seed=7)
    ba = paired_bootstrap(bad, good, refs, metric=metric, n=300, seed=7)
    assert ab["delta"] == pytest.approx(ab["score_a"] - ab["score_b"])
    assert ab["delta"] == pytest.approx(-ba["delta"])
    assert ab["interval"] == pytest.approx([-ba["interval"][1], -ba["interval"][0]])
    assert 0 < ab["interval"][0] <= ab["delta"] <= ab["interval"][1]
    assert ab["p_value"] < 0.05


def test_bad_metric_inputs_are_neft_errors(tmp_path):
    with pytest.raises(NeftError, match="unknown metric meteor"):
        score(HYPS, REFS, metrics="bleu,meteor")
    with pytest.raises(NeftError, match="unknown bootstrap metric"):
        paired_bootstrap(HYPS, HYPS, REFS, metric="ter")
    with pytest.raises(NeftError, match="3 hypotheses but 2 references"):
        score(HYPS, REFS[:2])
    with pytest.raises(NeftError, match="--comet_model"):
        score(HYPS, REFS, metrics="comet")
    with pytest.raises(NeftError, match="does not exist"):
        score(HYPS, REFS, metrics="comet", sources=REFS, comet_model=str(tmp_path / "none"))


@pytest.mark.skipif(importlib.util.find_spec("comet") is not None, reason="comet installed")
def test_comet_without_the_package_says_how_to_install(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "model.ckpt").write_bytes(b"")
    with pytest.raises(NeftError, match=r"neft\[comet\]"):
        score(HYPS, REFS, metrics="comet", sources=REFS, comet_model=str(tmp_path))


# ----------------------------------------------------------------------------- tiny model

WORDS = ("the a red blue old new small large empty open file files disk server user name "
         "message sent read write not found cannot die der das rote blaue Datei Dateien "
         "nicht gefunden kann lesen Translate following text from English to German . : "
         "### Instruction Input Response is was be of in on for with copy move all").split()
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of 64 entries, built in memory (no downloads)."""
    specials = ["<pad>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    backend.add_tokens([AddedToken("\n", normalized=False)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat:
        tokenizer.chat_template = CHATML
    assert len(tokenizer) == 64
    return tokenizer


def make_model(seed: int = 0) -> LlamaForCausalLM:
    """Random weights, with an init large enough for clear greedy choices (no near ties).

    Where it would say "lesen" it ends (eos) and where it would say "Response" it writes a
    line break instead, so that answers end at different steps.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, initializer_range=0.3,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None)
    model = LlamaForCausalLM(config).eval()
    vocab = make_tokenizer().get_vocab()
    with torch.no_grad():
        head = model.lm_head.weight
        head[1] = 1.05 * head[vocab["lesen"]]
        head[vocab["\n"]] = 1.05 * head[vocab["Response"]]
    return model


PROMPTS = ["the red file", "a blue disk cannot be read from the server . the user name",
           "open", "die rote Datei nicht gefunden", "the old message was sent to a new user"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tiny-eval-llama")
    make_model().save_pretrained(path)
    make_tokenizer(chat=True).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("toy-eval") / "test.jsonl"
    rows = [{"id": f"m{i}", "src_lang": "en", "tgt_lang": "de", "source": src,
             "target": "die rote Datei nicht gefunden"} for i, src in enumerate(PROMPTS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_batched_generation_equals_one_at_a_time_in_input_order():
    model, tokenizer = make_model(), make_tokenizer()
    batched = generate(model, tokenizer, PROMPTS, batch_size=3, max_new_tokens=6)
    single = generate(model, tokenizer, PROMPTS, batch_size=1, max_new_tokens=6)
    assert len(batched) == len(PROMPTS) and batched == single
    assert len(set(batched)) > 1
    for prompt, answer in zip(PROMPTS[:2], batched, strict=False):  # vs plain HF generate
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=[1])
        assert answer == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_no_repeat_ngram_option_changes_nothing_but_repeats():
    model, tokenizer = make_model(), make_tokenizer()
    answers = generate(model, tokenizer, PROMPTS, max_new_tokens=12, no_repeat_ngram_size=2)
    for answer in answers:
        words = answer.split()
        bigrams = list(zip(words, words[1:], strict=False))
        assert len(bigrams) == len(set(bigrams))


def test_stop_tokens_include_the_chat_end_of_turn():
    tokenizer = make_tokenizer(chat=True)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_token_id(tokenizer) == im_end
    assert end_of_turn_token_id(make_tokenizer()) is None
    assert stop_token_ids(tokenizer, make_model()) == [tokenizer.eos_token_id, im_end]


def test_answers_end_at_stop_tokens_and_newlines():
    tokenizer = make_tokenizer()
    ids = tokenizer("the red file \n blue disk").input_ids
    newline = tokenizer.convert_tokens_to_ids("\n")
    assert _finish(tokenizer, ids + [1, 5, 6], {0, 1}, False) == (
        "the red file \n blue disk", len(ids) + 1, True)
    assert _finish(tokenizer, ids, {0, 1}, True)[::2] == ("the red file", True)
    assert _finish(tokenizer, [newline] + ids[:3], {0, 1}, True) == ("the red file", 4, False)


def test_generation_stops_at_a_newline_after_text():
    model, tokenizer = make_model(), make_tokenizer()
    free = _generate(model, tokenizer, PROMPTS, 2, 12, 0, False, False)
    assert any("\n" in answer for answer in free[0])
    answers, counts, ended = _generate(model, tokenizer, PROMPTS, 2, 12, 0, True, False)
    for answer, count, end, free_answer in zip(answers, counts, ended, free[0], strict=True):
        assert answer == free_answer.partition("\n")[0].strip()
        assert end == ("\n" in free_answer.strip() or count < 12)
        if "\n" in free_answer.strip():
            assert count == len(tokenizer(free_answer.partition("\n")[0]).input_ids) + 1


def test_stop_at_newline_criterion_needs_text_before_the_break():
    tokenizer = make_tokenizer()
    newline = tokenizer.convert_tokens_to_ids("\n")
    red, blue = tokenizer.convert_tokens_to_ids(["red", "blue"])
    rows = torch.tensor([[blue, red, newline], [blue, newline, newline], [blue, newline, red]])
    criterion = StopAtNewline(tokenizer, newline_token_ids(tokenizer), prompt_length=1)
    assert newline_token_ids(tokenizer).tolist() == [newline]
    assert criterion(rows, torch.zeros(3, 64)).tolist() == [True, False, False]


def test_evaluate_model_returns_samples_scores_and_speed(toy_file):
    from neft.data import load_records

    model, tokenizer = make_model(), make_tokenizer()
    records = load_records(toy_file)
    result = evaluate_model(model, tokenizer, records, max_new_tokens=4, batch_size=2,
                            progress=False)
    assert [s["id"] for s in result["samples"]] == [r["id"] for r in records]
    assert [s["source"] for s in result["samples"]] == PROMPTS
    assert set(result["scores"]) == {"bleu", "chrf", "rouge1", "rouge2", "rougeL"}
    assert result["settings"]["template"] == "plain"
    assert result["settings"]["stop_at_newline"] is True
    assert result["generation"]["new_tokens"] > 0
    with pytest.raises(NeftError, match="unknown metric"):
        evaluate_model(model, tokenizer, records, metrics="bleurt")


# ----------------------------------------------------------------------------- adapters, CLI


def test_missing_adapter_is_a_neft_error(tiny_dir, tmp_path):
    with pytest.raises(NeftError, match="does not exist"):
        load_for_eval(tiny_dir, adapter=str(tmp_path / "missing"))
    with pytest.raises(NeftError, match="adapter_config.json"):
        load_for_eval(tiny_dir, adapter=str(tmp_path))


def test_neft_adapter_is_loaded_merged_from_its_recorded_base(tiny_dir, tmp_path):
    from neft.core.loading import load_model
    from neft.core.model import NeftConfig, get_neft_model

    base, tokenizer = load_model(tiny_dir)
    neurons = {"model.layers.0.mlp.up_proj": {"rows": [1, 5, 9]},
               "model.layers.1.mlp.down_proj": {"cols": [2, 3]}}
    neft = get_neft_model(base, NeftConfig(neurons=neurons))
    with torch.no_grad():
        for param in neft.parameters():
            if param.requires_grad:
                param.normal_(std=2.0)
    neft.save_pretrained(tmp_path)
    expected = generate(neft, tokenizer, PROMPTS, max_new_tokens=6)
    model, _, described = load_for_eval(str(tmp_path))  # an adapter folder given as model
    assert described == {"model": tiny_dir, "adapter": str(tmp_path), "adapter_type": "neft"}
    assert type(model).__name__ == "LlamaForCausalLM"
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=6) == expected
    assert expected != generate(load_model(tiny_dir)[0], tokenizer, PROMPTS, max_new_tokens=6)


def test_lora_adapter_is_loaded_with_peft(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from neft.core.loading import load_model

    base, tokenizer = load_model(tiny_dir)
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    lora.save_pretrained(tmp_path)
    expected = generate(lora, tokenizer, PROMPTS, max_new_tokens=6)
    model, _, described = load_for_eval(tiny_dir, adapter=str(tmp_path))
    assert described["adapter_type"] == "lora"
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=6) == expected


def test_cli_eval_writes_hypotheses_and_scores(tiny_dir, toy_file, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert cli_main(["eval", "--model", tiny_dir, "--data", toy_file, "--max_new_tokens", "3",
                     "--batch_size", "2", "--metrics", "bleu,chrf", "--output_file",
                     str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bleu" in printed and "tok:13a" in printed
    result = json.loads(out.read_text())
    assert result["settings"]["template"] == "chat"
    assert len(result["samples"]) == len(PROMPTS)
    assert set(result["scores"]) == {"bleu", "chrf"}
    assert cli_main(["eval", "--model", tiny_dir, "--data", toy_file, "--metrics", "x"]) == 2
    assert "unknown metric x" in capsys.readouterr().err
