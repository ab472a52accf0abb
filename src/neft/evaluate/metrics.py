"""Scores for generated text: sacreBLEU BLEU and chrF, ROUGE-1/2/L, placeholder survival,
optional COMET, and paired bootstrap resampling between two systems.

Every score is on a 0-100 scale and comes with a signature saying how it was computed,
so that numbers from different runs are only compared when they mean the same thing.

Metrics live in one registry. A generation metric is a function of a MetricInput (the
answers, the references, ...) returning ({score name: value}, signature); add one with

    def exact_match(inp):
        hits = sum(h.strip() == r.strip() for h, r in zip(inp.hyps, inp.refs))
        return {"exact_match": 100 * hits / len(inp.refs)}, "exact string match x100"

    register_metric("exact", exact_match)

and `neft eval --metrics exact` (and compare's eval metrics) can use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sacrebleu.metrics import BLEU, CHRF

from ..data.sources import placeholder_survival, placeholders
from ..errors import NeftError

DEFAULT_METRICS = ("bleu", "chrf", "rouge")
BOOTSTRAP_METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

# Languages written without spaces between words: 13a would make a whole clause one token.
# sacreBLEU's ja-mecab / ko-mecab need MeCab, which neft does not install, so Japanese is
# scored on characters ('char'), which is reproducible everywhere (but not WMT's ja-mecab).
_CHAR_LANGUAGES = ("ja", "th", "lo", "km", "my")

# Han (with radicals and extensions), kana and bopomofo: one ROUGE token per character.
_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff" \
       "\uf900-\ufaff\U00020000-\U0003134f"
_ROUGE_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
ROUGE_SIGNATURE = ("rouge-score F1 x100, mean over segments; tokens: one per CJK character, "
                   "else unicode words; lowercased; no stemming")


def language_code(lang: str | None) -> str | None:
    """'zh_CN' / 'zh-TW' / 'ZH' -> 'zh'; None stays None."""
    if not lang:
        return None
    return re.split(r"[_\-@.]", lang.strip())[0].lower()


def bleu_tokenizer(target_lang: str | None) -> str:
    """sacreBLEU tokenizer for a target language: zh for Chinese, char for Japanese and
    other languages without word spaces, else the WMT default 13a."""
    code = language_code(target_lang)
    if code == "zh":
        return "zh"
    if code in _CHAR_LANGUAGES:
        return "char"
    return "13a"


class RougeTokenizer:
    """rouge-score tokenizer that keeps non-Latin text.

    rouge-score's default keeps only [a-z0-9] and so scores Chinese output ~0; this one
    makes each CJK character a token and otherwise splits unicode words, lowercased.
    """

    def tokenize(self, text: str) -> list[str]:
        return _ROUGE_TOKEN.findall(text.lower())


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise NeftError(f"{len(hyps)} hypotheses but {len(refs)} references: pass one each")
    if not refs:
        raise NeftError("no hypotheses to score")


@dataclass
class MetricInput:
    """What a generation metric may use."""

    hyps: Sequence[str]
    refs: Sequence[str]
    target_lang: str | None = None
    sources: Sequence[str] | None = None
    comet_model: str | None = None


@dataclass(frozen=True)
class Metric:
    """``kind``: "generation" (scored from the answers by ``fn``) or "likelihood"
    (teacher-forced from the model, no generation: neft.evaluate.likelihood; no ``fn``)."""

    name: str
    fn: Callable[[MetricInput], tuple[dict[str, float | None], str]] | None
    kind: str = "generation"


METRICS: dict[str, Metric] = {}


def register_metric(name: str, fn: Callable[[MetricInput], tuple[dict[str, Any], str]] | None,
                    *, kind: str = "generation") -> Metric:
    """Make a metric usable by name in `neft eval --metrics` and compare's eval metrics."""
    if name in METRICS:
        raise NeftError(f"metric {name!r} is registered already")
    if kind not in ("generation", "likelihood") or (kind == "generation") != (fn is not None):
        raise NeftError(f"metric {name!r}: a generation metric has a function, a likelihood "
                        "one none (evaluate_model computes it)")
    METRICS[name] = metric = Metric(name, fn, kind)
    return metric


def parse_metrics(metrics: str | Sequence[str] | None, refs: Sequence[str] = ()) -> list[str]:
    """'bleu,chrf' or a list -> checked names. None: bleu, chrf, rouge, plus placeholders
    when any reference holds a format placeholder (%s, {name})."""
    if metrics is None:
        chosen = list(DEFAULT_METRICS)
        if any(placeholders(ref) for ref in refs):
            chosen.append("placeholders")
        return chosen
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    chosen = [name.strip().lower() for name in names if name.strip()]
    unknown = [name for name in chosen if name not in METRICS]
    if unknown or not chosen:
        raise NeftError(f"unknown metric {', '.join(unknown) or '(none given)'}: use a comma-"
                        f"separated list of {', '.join(METRICS)}")
    return list(dict.fromkeys(chosen))


def _rouge_per_segment(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, np.ndarray]:
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(list(ROUGE_TYPES), tokenizer=RougeTokenizer())
    rows = [scorer.score(ref, hyp) for hyp, ref in zip(hyps, refs, strict=True)]
    return {name: np.array([100 * row[name].fmeasure for row in rows]) for name in ROUGE_TYPES}


def comet_score(sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str],
                model_path: str, batch_size: int = 16) -> tuple[float, str]:
    """System COMET x100 with a local checkpoint (a model.ckpt file, or the folder of a
    downloaded COMET model holding checkpoints/model.ckpt). Needs the optional extra."""
    path = os.path.expanduser(model_path)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoints", "model.ckpt")
    if not os.path.isfile(path):
        raise NeftError(f"COMET checkpoint {path} does not exist: pass a downloaded COMET model "
                        "folder (e.g. wmt22-comet-da/) or its checkpoints/model.ckpt")
    try:
        from comet import load_from_checkpoint
    except ImportError:
        raise NeftError("COMET needs the optional extra: pip install 'neft[comet]' "
                        "(the unbabel-comet package)") from None
    model = load_from_checkpoint(path)
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs, strict=True)]
    output = model.predict(data, batch_size=batch_size, gpus=int(torch.cuda.is_available()),
                           progress_bar=False)
    name = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    return 100 * float(output.system_score), f"COMET {name} x100 (system score)"


def score(
    hyps: Sequence[str],
    refs: Sequence[str],
    target_lang: str | None = None,
    metrics: str | Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    comet_model: str | None = None,
) -> dict[str, dict[str, Any]]:
    """{"scores": {name: value}, "signatures": {metric: how it was computed}}.

    bleu / chrf: sacreBLEU corpus scores, tokenizer picked by target_lang (bleu_tokenizer).
    rouge: rouge1, rouge2, rougeL mean F1 with RougeTokenizer. placeholders:
    placeholder_survival in percent (None when the references hold none). comet: needs
    comet_model (a local checkpoint) and the sources. metrics=None: see parse_metrics.
    """
    _check_pairs(hyps, refs)
    chosen = parse_metrics(metrics, refs)
    if "comet" in chosen and not comet_model:
        raise NeftError("metric comet needs a local COMET checkpoint: pass --comet_model PATH")
    scores: dict[str, Any] = {}
    signatures: dict[str, str] = {}
    inp = MetricInput(hyps, refs, target_lang, sources, comet_model)
    for name in chosen:
        metric = METRICS[name]
        if metric.fn is None:
            continue  # computed from the model, not the answers (evaluate.evaluate_model)
        values, signatures[name] = metric.fn(inp)
        scores.update(values)
    return {"scores": scores, "signatures": signatures}


def _sacrebleu(inp: MetricInput, name: str) -> tuple[dict[str, Any], str]:
    metric = _sacrebleu_metric(name, inp.target_lang)
    value = float(metric.corpus_score(list(inp.hyps), [list(inp.refs)]).score)
    return {name: value}, str(metric.get_signature())


def _rouge(inp: MetricInput) -> tuple[dict[str, Any], str]:
    values = _rouge_per_segment(inp.hyps, inp.refs)
    return {name: float(v.mean()) for name, v in values.items()}, ROUGE_SIGNATURE


def _placeholders(inp: MetricInput) -> tuple[dict[str, Any], str]:
    survival = placeholder_survival(inp.hyps, inp.refs)
    return ({"placeholder_survival": None if np.isnan(survival) else 100 * survival},
            "% of the references' format placeholders that the hypothesis reproduces "
            "exactly (multiset)")


def _comet(inp: MetricInput) -> tuple[dict[str, Any], str]:
    if inp.sources is None:
        raise NeftError("metric comet needs the source texts")
    value, signature = comet_score(inp.sources, inp.hyps, inp.refs, inp.comet_model)
    return {"comet": value}, signature


def _sacrebleu_metric(name: str, target_lang: str | None) -> BLEU | CHRF:
    return BLEU(tokenize=bleu_tokenizer(target_lang)) if name == "bleu" else CHRF()


def _bootstrap_statistics(hyps: Sequence[str], refs: Sequence[str], metric: str,
                          target_lang: str | None
                          ) -> tuple[np.ndarray, Callable[[np.ndarray], float], str]:
    """Per-segment additive statistics and the function that turns their sum into a score.

    For BLEU/chrF these are sacreBLEU's own sufficient statistics (what its paired_bs uses),
    so a resampled score is exactly the corpus score of the resampled test set.
    """
    if metric in ("bleu", "chrf"):
        scorer = _sacrebleu_metric(metric, target_lang)
        stats = np.array(scorer._extract_corpus_statistics(list(hyps), [list(refs)]),
                         dtype=np.float64)
        return stats, lambda total: scorer._compute_score_from_stats(total).score, \
            str(scorer.get_signature())
    values = _rouge_per_segment(hyps, refs)[metric][:, None]
    count = len(refs)
    return values, lambda total: float(total[0]) / count, ROUGE_SIGNATURE


def paired_bootstrap(
    hyps_a: Sequence[str],
    hyps_b: Sequence[str],
    refs: Sequence[str],
    metric: str = "chrf",
    n: int = 1000,
    seed: int = 12345,
    target_lang: str | None = None,
) -> dict[str, Any]:
    """Paired bootstrap resampling (Koehn 2004) of system A minus system B.

    Both systems are scored on the same n resampled test sets (segments drawn with
    replacement), so the segment-level noise they share cancels. Returns the observed
    delta (score_a - score_b), its 95% percentile interval, and a two-sided p-value
    (twice the smaller share of resampled deltas on either side of 0, capped at 1).
    """
    _check_pairs(hyps_a, refs)
    _check_pairs(hyps_b, refs)
    if metric not in BOOTSTRAP_METRICS:
        raise NeftError(f"unknown bootstrap metric {metric!r}: use one of "
                        f"{', '.join(BOOTSTRAP_METRICS)}")
    if n < 1:
        raise NeftError(f"n must be at least 1 resample, got {n}")
    stats_a, to_score, signature = _bootstrap_statistics(hyps_a, refs, metric, target_lang)
    stats_b, _, _ = _bootstrap_statistics(hyps_b, refs, metric, target_lang)
    size = len(refs)
    # How often each segment is drawn in each resample: resampled sums are one matmul.
    counts = np.random.default_rng(seed).multinomial(size, np.full(size, 1 / size), size=n)
    sums_a, sums_b = counts @ stats_a, counts @ stats_b
    deltas = np.array([to_score(a) - to_score(b) for a, b in zip(sums_a, sums_b, strict=True)])
    score_a, score_b = float(to_score(stats_a.sum(0))), float(to_score(stats_b.sum(0)))
    low, high = np.percentile(deltas, [2.5, 97.5])
    p_value = min(1.0, 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0)))
    return {"metric": metric, "score_a": score_a, "score_b": score_b,
            "delta": score_a - score_b, "interval": [float(low), float(high)],
            "p_value": float(p_value), "resamples": n, "seed": seed, "signature": signature}


register_metric("bleu", lambda inp: _sacrebleu(inp, "bleu"))
register_metric("chrf", lambda inp: _sacrebleu(inp, "chrf"))
register_metric("rouge", _rouge)
register_metric("placeholders", _placeholders)
register_metric("comet", _comet)
# Teacher-forced, no generation (neft.evaluate.likelihood): test loss, and drift from the
# base model.
register_metric("loss", None, kind="likelihood")
register_metric("drift", None, kind="likelihood")
