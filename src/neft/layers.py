"""Layers that train selected neurons of a frozen linear layer.

``NeuronDeltaLayer`` (compact mode) keeps the base weight frozen and adds small
trainable tensors for the selected neurons only::

    rows R:  D_r [k, in]    y[..., R] += x @ D_r^T          (grad costs k/out of dense)
    cols C:  D_c [out, k]   y        += x[..., C] @ D_c^T

No dense effective weight is ever built; optimizer state is the selected neurons'
size. Merging is exact: W[R, :] += D_r and W[:, C] += D_c.

``NeuronMaskLayer`` reproduces the paper's code: the whole weight is trainable and its
gradient is multiplied by a 0/1 mask. It is a reference, not a way to save memory.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .errors import NeftError
from .neurons import is_conv1d, linear_shape


def _logical_weight(layer: nn.Module) -> torch.Tensor:
    """The base weight as an [out, in] view (Conv1D stores [in, out])."""
    return layer.weight.t() if is_conv1d(layer) else layer.weight


class _NeuronLayerBase(nn.Module):
    """Common bookkeeping: the wrapped base layer and the selected indices."""

    def __init__(self, base_layer: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.out_features, self.in_features = linear_shape(base_layer)
        device = base_layer.weight.device
        self.register_buffer("neft_rows", rows.to(device=device, dtype=torch.long),
                             persistent=False)
        self.register_buffer("neft_cols", cols.to(device=device, dtype=torch.long),
                             persistent=False)
        self.disabled = False

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, so code that reads ``layer.weight`` keeps working."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def extra_repr(self) -> str:
        return f"rows={self.neft_rows.numel()}, cols={self.neft_cols.numel()}"


class NeuronDeltaLayer(_NeuronLayerBase):
    """Compact trainable deltas for selected rows and/or columns of a frozen layer."""

    def __init__(self, base_layer: nn.Module, rows: torch.Tensor, cols: torch.Tensor,
                 delta_dtype: torch.dtype | None = torch.float32) -> None:
        super().__init__(base_layer, rows, cols)
        weight = base_layer.weight
        dtype = delta_dtype or weight.dtype
        base_layer.weight.requires_grad_(False)
        if base_layer.bias is not None:
            base_layer.bias.requires_grad_(False)
        # An axis with no neurons gets an empty, frozen tensor: DDP rejects trainable
        # parameters that never receive a gradient.
        self.neft_delta_rows = nn.Parameter(
            torch.zeros(self.neft_rows.numel(), self.in_features, dtype=dtype,
                        device=weight.device), requires_grad=bool(self.neft_rows.numel()))
        self.neft_delta_cols = nn.Parameter(
            torch.zeros(self.out_features, self.neft_cols.numel(), dtype=dtype,
                        device=weight.device), requires_grad=bool(self.neft_cols.numel()))
        self.merged = False
        self._merge_backup: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or self.disabled:
            return y
        if self.neft_rows.numel():
            update = F.linear(x, self.neft_delta_rows.to(x.dtype))
            # In place: the base output is not needed by its own backward.
            y = y.index_add_(-1, self.neft_rows, update.to(y.dtype))
        if self.neft_cols.numel():
            picked = x.index_select(-1, self.neft_cols)
            y = y + F.linear(picked, self.neft_delta_cols.to(x.dtype)).to(y.dtype)
        return y

    # -- merge -----------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        """Add the deltas into the base weight. The replaced slices are kept so that
        ``unmerge`` restores the base bit for bit (float addition is not invertible)."""
        if self.merged:
            return
        weight = _logical_weight(self.base_layer)
        self._merge_backup = (weight[self.neft_rows].clone(), weight[:, self.neft_cols].clone())
        weight[self.neft_rows] += self.neft_delta_rows.to(weight.dtype)
        weight[:, self.neft_cols] += self.neft_delta_cols.to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight = _logical_weight(self.base_layer)
        assert self._merge_backup is not None
        rows, cols = self._merge_backup
        weight[:, self.neft_cols] = cols
        weight[self.neft_rows] = rows
        self._merge_backup = None
        self.merged = False

    # -- adapter state ---------------------------------------------------------------------
    def get_deltas(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.neft_delta_rows.detach(), self.neft_delta_cols.detach()

    @torch.no_grad()
    def set_deltas(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        if rows.shape != self.neft_delta_rows.shape or cols.shape != self.neft_delta_cols.shape:
            raise NeftError(f"adapter deltas have shapes {list(rows.shape)}/{list(cols.shape)}, "
                            f"the layer expects {list(self.neft_delta_rows.shape)}/"
                            f"{list(self.neft_delta_cols.shape)}: adapter and base do not match")
        self.neft_delta_rows.copy_(rows)
        self.neft_delta_cols.copy_(cols)


class NeuronMaskLayer(_NeuronLayerBase):
    """The paper's gradient masking: full weight trainable, gradient zeroed off the mask.

    Dense gradients and dense optimizer state, as in the paper's code. Weight decay and
    momentum still move masked entries under AdamW; that is the behaviour reproduced.
    The weight is always "merged"; ``get_deltas`` is the change of the selected slices.
    """

    def __init__(self, base_layer: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> None:
        super().__init__(base_layer, rows, cols)
        weight = base_layer.weight
        weight.requires_grad_(True)
        mask = torch.zeros(self.out_features, self.in_features, dtype=weight.dtype,
                           device=weight.device)
        mask[self.neft_rows] = 1
        mask[:, self.neft_cols] = 1
        self.register_buffer("neft_mask", mask.t() if is_conv1d(base_layer) else mask,
                             persistent=False)
        logical = _logical_weight(base_layer).detach()
        self.register_buffer("neft_original_rows", logical[self.neft_rows].clone(),
                             persistent=False)
        self.register_buffer("neft_original_cols", logical[:, self.neft_cols].clone(),
                             persistent=False)
        self._hook = weight.register_hook(lambda grad: grad * self.neft_mask)
        self.merged = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self._forward_original(x)
        return self.base_layer(x)

    def _forward_original(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            weight = _logical_weight(self.base_layer).detach().clone()
            weight[self.neft_rows] = self.neft_original_rows
            weight[:, self.neft_cols] = self.neft_original_cols
        return F.linear(x, weight, self.base_layer.bias)

    def merge(self) -> None:
        """Mask mode trains the weight itself: it is merged already."""

    def unmerge(self) -> None:
        raise NeftError("mask mode trains the base weight in place and cannot unmerge; use "
                        "mode='compact' to keep the base weight intact")

    def get_deltas(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight = _logical_weight(self.base_layer).detach()
        rows = weight[self.neft_rows] - self.neft_original_rows
        cols = weight[:, self.neft_cols] - self.neft_original_cols
        return rows.float(), cols.float()

    @torch.no_grad()
    def set_deltas(self, rows: torch.Tensor, cols: torch.Tensor) -> None:
        weight = _logical_weight(self.base_layer)
        weight[self.neft_rows] = self.neft_original_rows + rows.to(weight.dtype)
        weight[:, self.neft_cols] = self.neft_original_cols + cols.to(weight.dtype)

    def remove_hook(self) -> None:
        self._hook.remove()
