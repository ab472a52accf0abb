"""Two processes under torchrun (gloo on CPU) train the same adapter as one process with
the same global batch; only rank 0 writes outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


def run_training(args: list[str], nproc: int, env: dict[str, str]) -> None:
    if nproc == 1:
        command = [sys.executable, "-m", "neft.cli", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={nproc}", "-m", "neft.cli", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_equal_one_with_the_same_global_batch(tiny_model_dir, toy_data_dir,
                                                            tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["train", "--model", tiny_model_dir, "--train_file",
              os.path.join(toy_data_dir, "train.jsonl"), "--train_split", "none",
              "--method", "random", "--num_neurons", "6", "--max_steps", "3",
              "--learning_rate", "1e-2", "--max_length", "64", "--logging_steps", "1"]
    run_training([*common, "--per_device_train_batch_size", "4", "--output_dir",
                  str(tmp_path / "one")], 1, env)
    run_training([*common, "--per_device_train_batch_size", "2", "--output_dir",
                  str(tmp_path / "two")], 2, env)
    one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        # Adam divides by sqrt(v): near-zero gradients amplify float-order differences.
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    assert any(one[k].abs().sum() > 0 for k in one if "::delta_" in k)
    files = sorted(os.listdir(tmp_path / "two"))
    assert not [f for f in files if ".tmp" in f], files
    assert sorted(os.listdir(tmp_path / "one")) == files
