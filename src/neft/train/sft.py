"""trl's SFTTrainer for NeftModels (``pip install 'neft[trl]'``).

    from neft import NeftSFTTrainer
    trainer = NeftSFTTrainer(model=neft_model, args=SFTConfig(...), train_dataset=...)

Two things differ from a plain SFTTrainer. Its checkpoints and final save are the neft
adapter (adapter_config.json, adapter_model.safetensors, README.md), which resume and
load_best_model_at_end read back (NeftTrainerMixin); SFTTrainer alone knows only
PreTrainedModel and PeftModel and would save a NeftModel's whole state dict. And trl's
fused LM-head loss, which patches the forward of the model it is given, patches the
wrapped transformers model: on the NeftModel itself it would call the whole causal LM
where it expects the backbone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..core.model import NeftModel
from ..errors import NeftError
from .trainer import NeftTrainerMixin

try:
    import trl.trainer.sft_trainer as _sft
    from trl import SFTTrainer
except ImportError as exc:  # an optional extra
    raise NeftError("NeftSFTTrainer needs trl: pip install 'neft[trl]'") from exc


@contextlib.contextmanager
def _fused_head_on_base_model() -> Iterator[None]:
    original = getattr(_sft, "add_fused_lm_head", None)
    if original is None:  # a trl without the fused head: nothing to redirect
        yield
        return

    def redirect(model: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(model, NeftModel):
            model = model.base_model
        return original(model, *args, **kwargs)

    _sft.add_fused_lm_head = redirect
    try:
        yield
    finally:
        _sft.add_fused_lm_head = original


class NeftSFTTrainer(NeftTrainerMixin, SFTTrainer):
    """SFTTrainer that trains, saves and reloads a NeftModel as its neft adapter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with _fused_head_on_base_model():
            super().__init__(*args, **kwargs)
