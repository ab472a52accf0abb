"""NeftConfig, get_neft_model and NeftModel: PEFT's shape of API for neuron deltas.

    model = get_neft_model(base, NeftConfig(neurons="selection.safetensors"))
    model.print_trainable_parameters()
    model.save_pretrained(out)            # adapter_config.json + adapter_model.safetensors
    model = NeftModel.from_pretrained(base, out)
    merged = model.merge_and_unload()     # a plain transformers model
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import NeftError
from .card import CARD_NAME, adapter_card, hub_id, write_card
from .io import atomic_save_file, atomic_text
from .layers import NeuronDeltaLayer, NeuronMaskLayer
from .loading import recorded_name
from .neuron_set import NeuronSet, read_safetensors
from .neurons import AXES, count_parameters, is_target_layer, model_fingerprint

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_FORMAT = "neft.adapter"
MODES = ("compact", "mask")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

NeuronSpec = NeuronSet | str | os.PathLike | Mapping[str, Mapping[str, Any]]


@dataclass
class NeftConfig:
    """What to train. ``neurons``: a NeuronSet, a NeuronSet file, or a plain mapping
    ``{"model.layers.0.mlp.up_proj": {"rows": [3, 17]}, ...}``.

    ``mode``: ``compact`` (small trainable deltas; the point of neft) or ``mask`` (the
    paper's gradient masking, a reference). ``delta_dtype``: dtype of the deltas;
    ``float32`` keeps small updates exact on bf16/fp16 bases, ``None`` follows the base.
    """

    neurons: NeuronSpec | None = None
    mode: str = "compact"
    delta_dtype: str | None = "float32"
    base_model_name_or_path: str | None = None
    peft_type: str = field(default="NEFT", init=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise NeftError(f"mode={self.mode!r} is not known; use one of {', '.join(MODES)}")
        if self.delta_dtype is not None and self.delta_dtype not in DTYPES:
            raise NeftError(f"delta_dtype={self.delta_dtype!r} is not known; use one of "
                            f"{', '.join(DTYPES)} or None (the base weight's dtype)")

    def resolve_neurons(self, model: nn.Module) -> NeuronSet:
        spec = self.neurons
        if spec is None:
            raise NeftError("NeftConfig has no neurons; pass neurons=<NeuronSet | file | "
                            "mapping> (make one with `neft select`)")
        if isinstance(spec, NeuronSet):
            neurons = NeuronSet(dict(spec.indices), dict(spec.shapes), dict(spec.metadata))
        elif isinstance(spec, (str, os.PathLike)):
            neurons = NeuronSet.load(spec)
        elif isinstance(spec, Mapping):
            neurons = NeuronSet.from_mapping(spec)
        else:
            raise NeftError(f"neurons must be a NeuronSet, a file path or a mapping, not "
                            f"{type(spec).__name__}")
        if not neurons.num_neurons():
            raise NeftError("the neuron set is empty; select at least one neuron")
        return neurons.validate(model)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("neurons")  # the indices live in the weights file
        return data


def shared_weights(model: nn.Module) -> set[str]:
    """Modules whose weight is also another module's parameter (tied input and output
    embeddings, as in SmolLM2 and GPT-2): writing W0 + D into such a weight would change
    the other module too."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name.rpartition(".")[0])
    shared = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and len(set(owners.get(id(weight), []))) > 1:
            shared.add(name)
    return shared


def _untie_config(model: nn.Module) -> None:
    """Tell transformers not to tie the embeddings again (on save, load or tie_weights)."""
    config = getattr(model, "config", None)
    for part in {id(c): c for c in (config, getattr(config, "get_text_config",
                                                    lambda: None)())}.values():
        if part is not None and hasattr(part, "tie_word_embeddings"):
            part.tie_word_embeddings = False


def _refuse_stacking(model: nn.Module) -> None:
    """One adapter per model: a second would be wrapped around the first one's layers."""
    if isinstance(model, NeftModel) or any(
            isinstance(m, (NeuronDeltaLayer, NeuronMaskLayer)) for m in model.modules()):
        raise NeftError("this model already holds a neft adapter, and stacking a second one "
                        "is not supported: merge the first into the weights "
                        "(model = model.merge_and_unload()) and load the second onto that, "
                        "or load the second onto a fresh base model")


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


class NeftModel(nn.Module):
    """A causal LM whose selected neurons are trainable; everything else is frozen.

    Attribute access falls through to the wrapped model, so ``model.config``,
    ``model.generate`` and friends work as on the base model.
    """

    def __init__(self, model: nn.Module, config: NeftConfig) -> None:
        super().__init__()
        _refuse_stacking(model)
        neurons = config.resolve_neurons(model)
        modules = dict(model.named_modules())
        for path in neurons.modules():
            if not is_target_layer(modules[path]):
                raise NeftError(f"neurons name {path}, a {type(modules[path]).__name__}: neft "
                                "trains neurons of nn.Linear or Conv1D layers only (is the "
                                "model already wrapped by peft?)")
        self.base_model = model
        self.neft_config = config
        self.base_fingerprint = model_fingerprint(model)
        self.neurons = neurons
        # Steps and losses for the adapter card (README.md); a Trainer with neft's mixin
        # fills it in before saving, anyone else may too.
        self.training_info: dict[str, Any] = {}
        shared = shared_weights(model)
        flags = [(p, p.requires_grad) for p in model.parameters()]
        done: list[tuple[str, nn.Module]] = []
        try:
            for param in model.parameters():
                param.requires_grad_(False)
            dtype = DTYPES[config.delta_dtype] if config.delta_dtype else None
            for path in neurons.modules():
                base_layer = model.get_submodule(path)
                rows, cols = neurons.get(path, "rows"), neurons.get(path, "cols")
                if config.mode == "compact":
                    layer: nn.Module = NeuronDeltaLayer(base_layer, rows, cols, dtype,
                                                        shared_weight=path in shared)
                elif path in shared:
                    raise NeftError(f"{path} shares its weight with another module (tied "
                                    "embeddings), which mask mode would train too; use "
                                    "mode='compact' (neft train --neft_mode compact) or "
                                    "leave it out of the neurons")
                else:
                    layer = NeuronMaskLayer(base_layer, rows, cols)
                _set_submodule(model, path, layer)
                done.append((path, layer))
        except BaseException:
            # A half-wrapped model is worse than none: the caller's model goes back as given.
            for path, layer in reversed(done):
                _set_submodule(model, path, layer.base_layer)
            for param, flag in flags:
                param.requires_grad_(flag)
            raise
        if shared:
            names = sorted(p for p in neurons.modules() if p in shared)
            if names:
                logger.info("%s share their weight with other modules (tied embeddings); "
                            "their deltas are added on the fly, never written into the "
                            "shared weight", ", ".join(names))

    # -- delegation ------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        # Named arguments (as PEFT's causal-LM wrapper) so Trainer keeps these columns.
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "inputs_embeds": inputs_embeds, "labels": labels}
        kwargs.update({k: v for k, v in inputs.items() if v is not None})
        if not torch.is_grad_enabled():
            self._verify_next_pass()
        return self.base_model(**kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self._verify_next_pass()  # generate runs without gradients, once per call
        return self.base_model.generate(*args, **kwargs)

    def _verify_next_pass(self) -> None:
        """Check the weights against the deltas in the next pass: deltas changed through
        ``.data`` by a hand-written update are seen by no version counter, and evaluating
        the model as it was before that update would score another model than the one
        saved. Grad-enabled passes check anyway."""
        for _, layer in self.neft_layers():
            if isinstance(layer, NeuronDeltaLayer):
                layer._verify_next = True

    def get_base_model(self) -> nn.Module:
        return self.base_model

    def neft_layers(self) -> Iterator[tuple[str, NeuronDeltaLayer | NeuronMaskLayer]]:
        for name, module in self.base_model.named_modules():
            if isinstance(module, (NeuronDeltaLayer, NeuronMaskLayer)):
                yield name, module

    # -- parameters ------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all): for compact mode, exactly the selected neurons' values."""
        total = count_parameters(self.base_model)
        if self.neft_config.mode == "mask":  # the masked weights train (unless frozen)
            training = any(layer.weight.requires_grad for _, layer in self.neft_layers())
            return (self.neurons.num_parameters() if training else 0), total
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || "
              f"trainable%: {100 * trainable / total:.4f} || neurons: "
              f"{self.neurons.num_neurons():,} ({self.neft_config.mode})")

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None,
                                      **options: Any) -> None:
        """Checkpoint the base model's blocks; non-reentrant by default so that grads reach
        the deltas although the (frozen) block inputs do not require grad."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        enable = getattr(self.base_model, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5
            enable(activation_checkpointing_kwargs=kwargs, **options)
        else:
            self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if kwargs["use_reentrant"]:
            self.base_model.enable_input_require_grads()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        **options: Any) -> None:
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, **options)

    # -- merge -----------------------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None,
                      safe_merge: bool = False) -> None:
        """Add the deltas into the base weights (exactly undone by unmerge_adapter).
        ``safe_merge`` checks the merged weights are finite first, as in PEFT."""
        _one_adapter(adapter_names)
        if safe_merge:
            self._check_finite_deltas()
        for _, layer in self.neft_layers():
            layer.merge()

    def unmerge_adapter(self) -> None:
        for _, layer in self.neft_layers():
            layer.unmerge()

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """Add the deltas into the base weights exactly and return the plain model. A
        module whose weight was tied to another's (lm_head and embed_tokens) gets its own
        merged weight and the config says so, so that the saved model loads as trained.
        PEFT's arguments: ``safe_merge`` checks the deltas are finite before anything is
        merged; ``progressbar`` is accepted (the merge takes a moment)."""
        del progressbar
        _one_adapter(adapter_names)
        if safe_merge:
            self._check_finite_deltas()
        untied = False
        for path, layer in list(self.neft_layers()):
            layer.merge()
            untied = untied or bool(getattr(layer, "untied", False))
            _set_submodule(self.base_model, path, layer.base_layer)
        if untied:
            _untie_config(self.base_model)
        return self.base_model

    def _check_finite_deltas(self) -> None:
        for path, layer in self.neft_layers():
            if isinstance(layer, NeuronDeltaLayer) and not all(
                    bool(torch.isfinite(delta).all()) for delta in layer.get_deltas()):
                raise NeftError(f"the deltas of {path} hold NaN or inf: merging would break "
                                "the model; nothing was merged (train again, or load an "
                                "earlier checkpoint)")

    def load_adapter(self, *_: Any, **__: Any) -> None:
        raise NeftError(_ONE_ADAPTER + "; to load a checkpoint of this adapter (same neurons) "
                        "into this model, call model.load_adapter_weights(folder)")

    def add_adapter(self, *_: Any, **__: Any) -> None:
        raise NeftError(_ONE_ADAPTER)

    def set_adapter(self, *_: Any, **__: Any) -> None:
        raise NeftError(_ONE_ADAPTER)

    def delete_adapter(self, *_: Any, **__: Any) -> None:
        raise NeftError(_ONE_ADAPTER + "; to drop it, call model.unload()")

    def disable_adapters(self, *_: Any, **__: Any) -> None:
        raise NeftError("run the base model with `with model.disable_adapter():` (a context: "
                        "the adapter comes back after the block)")

    enable_adapters = disable_adapters

    def _unwrap(self) -> None:
        """Put the base layers back without touching their weights (no deltas were set)."""
        for path, layer in list(self.neft_layers()):
            _set_submodule(self.base_model, path, layer.base_layer)

    def unload(self) -> nn.Module:
        """Drop the adapter without merging and return the untouched base model."""
        for path, layer in list(self.neft_layers()):
            if isinstance(layer, NeuronMaskLayer):
                raise NeftError("mask mode changed the base weights in place; there is no "
                                "untouched base to unload to")
            layer.unmerge()
            _set_submodule(self.base_model, path, layer.base_layer)
        return self.base_model

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model as if no neurons were trained (merged deltas included)."""
        self._warn_if_moved_off_mask("with the adapter disabled the model is not the base")
        layers = [layer for _, layer in self.neft_layers()]
        remerge = [layer for layer in layers
                   if isinstance(layer, NeuronDeltaLayer) and layer.merged]
        for layer in remerge:
            layer.unmerge()
        for layer in layers:
            layer.disabled = True
        try:
            yield
        finally:
            for layer in layers:
                layer.disabled = False
            for layer in remerge:
                layer.merge()

    def _warn_if_moved_off_mask(self, consequence: str) -> None:
        moved = [path for path, layer in self.neft_layers()
                 if isinstance(layer, NeuronMaskLayer) and layer.moved_off_mask()]
        if moved:
            logger.warning("mask mode: weights off the selected neurons changed in %d modules "
                           "(e.g. %s; weight decay does that), so %s; train mask mode with "
                           "weight_decay=0, or use mode='compact' (--neft_mode compact)",
                           len(moved), moved[0], consequence)

    # -- save / load -----------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Indices and deltas of every module, keyed ``<module>::rows|cols|delta_*``.
        Sharded deltas are gathered (a collective under FSDP2 / ZeRO-3: call on all ranks)."""
        if next(self.neft_layers(), None) is None:
            raise NeftError("this NeftModel was unloaded (merge_and_unload or unload) and "
                            "holds no deltas: save the adapter before unloading, or save "
                            "the merged model with its own save_pretrained")
        tensors = self.neurons.tensors()
        self._warn_if_moved_off_mask("the adapter holds the selected slices only and will not "
                                     "reproduce this model")
        for path, layer in self.neft_layers():
            delta_rows, delta_cols = layer.get_deltas()
            if layer.neft_rows.numel():
                tensors[f"{path}::delta_rows"] = delta_rows.contiguous().cpu()
            if layer.neft_cols.numel():
                tensors[f"{path}::delta_cols"] = delta_cols.contiguous().cpu()
        return {k: v.cpu() for k, v in tensors.items()}

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        **_: Any) -> None:
        """Write adapter_config.json, adapter_model.safetensors and an adapter card,
        README.md (each atomically; loading never reads the card).

        Sharded deltas (FSDP2, ZeRO-3) are gathered first, which every rank must join:
        call it on all ranks with ``is_main_process`` true on the one that writes.
        """
        state = self.adapter_state()
        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        metadata = self.neurons.file_metadata()
        metadata.update(format=ADAPTER_FORMAT, base_fingerprint=self.base_fingerprint)
        atomic_save_file(state, os.path.join(save_directory, WEIGHTS_NAME), metadata)
        config = self.neft_config.to_dict()
        config.update(neft_version=__version__, base_fingerprint=self.base_fingerprint,
                      num_neurons=self.neurons.num_neurons(),
                      num_parameters=self.neurons.num_parameters(),
                      neuron_summary=self.neurons.summary(),
                      neuron_metadata=self.neurons.metadata)
        if self.training_info:  # kept for the card of a reload saved again
            config["training"] = self.training_info
        if config.get("base_model_name_or_path") is None:
            config["base_model_name_or_path"] = getattr(
                getattr(self.base_model, "config", None), "_name_or_path", None)
        if config["base_model_name_or_path"]:

            config["base_model_name_or_path"] = recorded_name(config["base_model_name_or_path"])
        path = os.path.join(save_directory, CONFIG_NAME)
        with atomic_text(path) as handle:
            json.dump(config, handle, indent=2, default=str)
        write_card(save_directory, adapter_card(config, self.neurons, self.training_info))

    def push_to_hub(self, repo_id: str, *, private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None,
                    commit_message: str = "Upload neft adapter",
                    create_repo: bool = True) -> Any:
        """Upload the adapter (config, weights, card) to a Hub model repo, made if missing.

        The folder save_pretrained writes is uploaded with huggingface_hub's
        ``upload_folder``; returns its CommitInfo. Needs a token (``hf auth login``).
        """
        import tempfile

        import huggingface_hub

        with tempfile.TemporaryDirectory(prefix="neft-push-") as folder:
            self.save_pretrained(folder)
            if create_repo:
                huggingface_hub.create_repo(repo_id, private=private, token=token,
                                            exist_ok=True)
            return huggingface_hub.upload_folder(
                repo_id=repo_id, folder_path=folder, token=token, revision=revision,
                commit_message=commit_message)

    def load_adapter_weights(self, adapter_dir: str | os.PathLike) -> None:
        """Set the deltas from a saved adapter with the same neurons (e.g. a checkpoint).

        Every tensor is checked (indices in range, deltas present, shaped for their
        indices, floating point, finite) before any is set, so a damaged or tampered
        file changes nothing.
        """
        path = os.path.join(adapter_dir, WEIGHTS_NAME)
        if NeuronSet.load(path) != self.neurons:
            raise NeftError(f"{path} holds other neurons than this model trains; load it "
                            "with NeftModel.from_pretrained on the base model instead")
        tensors, _ = read_safetensors(path)
        checked = []
        for name, layer in self.neft_layers():
            current = layer.get_deltas()
            loaded = []
            for axis, index, now in zip(AXES, (layer.neft_rows, layer.neft_cols), current,
                                        strict=True):
                key = f"{name}::delta_{axis}"
                delta = tensors.get(key)
                if delta is None:
                    if index.numel():  # must not load silently as zeros (untrained)
                        raise NeftError(f"{path} has indices but no deltas for {name} {axis} "
                                        f"({key!r}); the file is damaged: use another "
                                        "checkpoint")
                    delta = now
                elif not delta.dtype.is_floating_point:
                    raise NeftError(f"{path}: {key!r} is {delta.dtype}, not floating point; "
                                    "the file is damaged: use another checkpoint")
                elif delta.shape != now.shape:
                    raise NeftError(f"{path}: {key!r} has shape {list(delta.shape)} but its "
                                    f"indices need {list(now.shape)}; the file is damaged: "
                                    "use another checkpoint")
                elif not bool(torch.isfinite(delta).all()):
                    raise NeftError(f"{path}: {key!r} holds NaN or infinite values (training "
                                    "diverged?); use an earlier checkpoint")
                loaded.append(delta.to(layer.weight.device))
            checked.append((layer, loaded))
        for layer, (rows, cols) in checked:
            layer.set_deltas(rows, cols)

    @staticmethod
    def read_config(adapter_dir: str | os.PathLike) -> dict[str, Any]:
        config = read_adapter_config(adapter_dir)
        kind = str(config.get("peft_type", "NEFT")).upper()
        if kind != "NEFT":
            raise NeftError(f"{adapter_dir} is a {kind} adapter, not a neft one: load it with "
                            "peft (`neft eval --adapter` does), or merge it with peft's "
                            "merge_and_unload")
        return config

    @classmethod
    def saved_base_name(cls, adapter_dir: str | os.PathLike) -> str:
        """The base model an adapter names, for loading it without being told."""
        name = cls.read_config(adapter_dir).get("base_model_name_or_path")
        if not name:
            raise NeftError(f"adapter {adapter_dir} does not name its base model; pass --model")
        return name

    @classmethod
    def from_pretrained(cls, model: nn.Module, adapter_dir: str | os.PathLike,
                        is_trainable: bool = False, adapter_name: str = "default", *,
                        revision: str | None = None, token: str | bool | None = None
                        ) -> NeftModel:
        """Wrap ``model`` with a saved adapter: a folder, or the Hub id of one that
        ``push_to_hub`` uploaded (``revision``, ``token`` as in PEFT). Frozen unless
        ``is_trainable``. One adapter per model, named ``default`` as in PEFT."""
        _one_adapter([adapter_name])
        adapter_dir = adapter_folder(adapter_dir, revision, token)
        saved = cls.read_config(adapter_dir)
        _refuse_stacking(model)
        fingerprint = saved.get("base_fingerprint")
        if fingerprint and fingerprint != model_fingerprint(model):
            raise NeftError(f"adapter {adapter_dir} was trained on another base model "
                            f"(fingerprint {fingerprint}, this model {model_fingerprint(model)});"
                            " load the base model it was made for")
        neurons = NeuronSet.load(os.path.join(adapter_dir, WEIGHTS_NAME))
        neurons.metadata = saved.get("neuron_metadata", {})
        config = NeftConfig(neurons=neurons, mode=saved.get("mode", "compact"),
                            delta_dtype=saved.get("delta_dtype", "float32"),
                            base_model_name_or_path=saved.get("base_model_name_or_path"))
        flags = [(p, p.requires_grad) for p in model.parameters()]
        wrapped = cls(model, config)
        wrapped.training_info = dict(saved.get("training") or {})
        try:
            wrapped.load_adapter_weights(adapter_dir)
        except BaseException:
            wrapped._unwrap()  # the caller's model is left as it was given
            for param, flag in flags:
                param.requires_grad_(flag)
            raise
        if not is_trainable:
            for param in wrapped.parameters():
                param.requires_grad_(False)
        return wrapped


def get_neft_model(model: nn.Module, config: NeftConfig) -> NeftModel:
    """Wrap the selected neurons' layers of ``model``; freeze everything else."""
    if not isinstance(config, NeftConfig):
        raise NeftError(f"get_neft_model takes a NeftConfig, not {type(config).__name__}: "
                        "get_neft_model(model, NeftConfig(neurons=...))")
    return NeftModel(model, config)


_ONE_ADAPTER = ("a NeftModel holds one adapter, named 'default' (PEFT's several named "
                "adapters are not supported): wrap a fresh base with NeftModel.from_pretrained"
                "(base, folder) for another")


def _one_adapter(names: list[str] | None) -> None:
    if names is not None and list(names) != ["default"]:
        raise NeftError(f"adapter names {list(names)}: " + _ONE_ADAPTER)


def adapter_folder(adapter: str | os.PathLike, revision: str | None = None,
                   token: str | bool | None = None) -> str:
    """A local adapter folder: the path as given, or for the Hub id of an adapter (no such
    local path), its files downloaded into the Hub cache (``HF_HUB_OFFLINE`` reads the
    cache only)."""
    path = os.path.expanduser(os.fspath(adapter))
    if os.path.exists(path) or not hub_id(path):
        return path
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(
            repo_id=path, revision=revision, token=token,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME])
    except Exception as exc:  # offline, no such repo, no access: the Hub's many errors
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NeftError(f"adapter {adapter} is not a local folder, and the Hub did not give "
                        f"it ({reason}); check the path, or the repo id and your access "
                        "(hf auth login)") from exc


def read_adapter_config(adapter_dir: str | os.PathLike, peft: bool = False) -> dict[str, Any]:
    """The adapter_config.json of a neft adapter folder, or with ``peft`` of any PEFT one
    (the one reader of it: NeftModel, evaluation and analysis use it)."""
    config_path = os.path.join(adapter_dir, CONFIG_NAME)
    if not os.path.isdir(adapter_dir):
        what = "is a file, not a folder" if os.path.exists(adapter_dir) else "does not exist"
        raise NeftError(f"adapter folder {adapter_dir} {what}: pass the output_dir of "
                        f"`neft train`{' (or a PEFT adapter folder)' if peft else ''}")
    if not os.path.isfile(config_path):
        if peft:
            raise NeftError(f"{adapter_dir} has no {CONFIG_NAME}: pass a neft or PEFT adapter "
                            "folder, or give a full/merged model folder as --model")
        if os.path.isfile(os.path.join(adapter_dir, "model.safetensors")):
            raise NeftError(f"{adapter_dir} has no {CONFIG_NAME} but a model.safetensors: a "
                            "plain transformers Trainer saves a NeftModel whole; train with "
                            "neft.train.trainer.NeftTrainer (or NeftTrainerMixin), whose "
                            "checkpoints are adapters")
        raise NeftError(f"{adapter_dir} has no {CONFIG_NAME}; is it a neft adapter folder "
                        "(written by save_pretrained or `neft train`)?")
    try:
        with open(config_path) as handle:
            config = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeftError(f"{config_path} is not valid JSON ({exc}); the adapter is damaged: "
                        "save it again or use a checkpoint") from None
    if not isinstance(config, dict):
        raise NeftError(f"{config_path} must hold a JSON object; the adapter is damaged")
    return config
