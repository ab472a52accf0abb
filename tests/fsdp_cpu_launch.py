"""`neft train` through Trainer's FSDP2 path on CPU processes (gloo), for tests only.

    torchrun --nproc_per_node 2 tests/fsdp_cpu_launch.py train ... --fsdp true \\
        --fsdp_config examples/fsdp/fsdp2.json

accelerate shards with FSDP on GPUs and other accelerators only: it runs CPU processes
as DDP and ignores the FSDP plugin. This marks such a CPU state as FSDP, which is what
it is on GPUs; everything after that (accelerate's fsdp2_prepare_model, Trainer's
checkpointing, neft's saving) is the code a GPU run takes. With NEFT_TEST_FSDP_REPORT
set, rank 0 writes there whether the trained model was really sharded.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

from neft.cli import main
from neft.core.layers import NeuronDeltaLayer, is_dtensor
from neft.train import NeftTrainer

_init = AcceleratorState.__init__


def _init_as_fsdp(self: AcceleratorState, *args: Any, fsdp_plugin: Any = None,
                  **kwargs: Any) -> None:
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


_save_model = NeftTrainer.save_model


def _save_and_report(self: NeftTrainer, output_dir: str | None = None,
                     _internal_call: bool = False) -> None:
    report = os.environ.get("NEFT_TEST_FSDP_REPORT")
    if report and self.args.should_save:
        layers = [m for m in self.model.modules() if isinstance(m, NeuronDeltaLayer)]
        with open(report, "w") as handle:
            json.dump({"fsdp": self.is_fsdp_enabled,
                       "sharded_deltas": all(is_dtensor(m.neft_delta_rows)
                                             for m in layers if m.neft_rows.numel()),
                       "fast_path_unused": all(m._original is None for m in layers)}, handle)
    _save_model(self, output_dir, _internal_call)


AcceleratorState.__init__ = _init_as_fsdp
NeftTrainer.save_model = _save_and_report

if __name__ == "__main__":
    sys.exit(main())
