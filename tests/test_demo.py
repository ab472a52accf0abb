"""`neft demo` end to end on the embedded SmolLM2, cut to a few steps and messages: the
command `make demo` runs must not break unnoticed (its full run takes ~14 minutes)."""

from __future__ import annotations

import json

import pytest

from neft.errors import NeftError
from neft.experiments.demo import DemoConfig, run_demo


@pytest.mark.integration
def test_demo_trains_evaluates_and_reports(tmp_path):
    config = DemoConfig(output_dir=str(tmp_path / "demo"), train_examples=16, dev_examples=4,
                        test_examples=4, max_new_tokens=4, max_steps=2, batch_size=2,
                        scorer="random")
    path = run_demo(config)
    report = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert set(report["scores"]) == {"base", "neft", "lora"}
    assert report["runs"]["neft"]["trainable_parameters"] == \
        report["runs"]["lora"]["trainable_parameters"] == 2_442_240
    assert "| neft | 2,442,240 |" in open(path).read()
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 0
    with pytest.raises(NeftError, match="--overwrite"):
        run_demo(config)  # its own report is kept unless asked
