"""Interruptions, as a user meets them: the real `neft` command in its own process, stopped
with Ctrl-C (SIGINT) and killed outright (SIGKILL), then resumed. Nothing may be lost or
half-written, and the resumed run must end bit-identical to one never interrupted.

(In-process SIGTERM + resume is in test_train.py; this is the out-of-process version.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ADAPTER = "adapter_model.safetensors"


def neft_command() -> list[str]:
    script = Path(sys.executable).with_name("neft")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "neft.cli"]


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    handle = open(log, "w")  # noqa: SIM115 - closed by the child's exit, read by the test
    # As from a terminal: a shell's background job (CI runners, nohup) inherits SIGINT
    # ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
    return subprocess.Popen([*neft_command(), *args], stdout=handle, stderr=subprocess.STDOUT,
                            env=env, preexec_fn=_ctrl_c_as_from_a_terminal)


def _ctrl_c_as_from_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(process: subprocess.Popen, timeout: float = 120) -> int:
    return process.wait(timeout=timeout)


def complete_checkpoints(folder: Path) -> list[int]:
    """Steps of the checkpoints that Trainer finished writing (trainer_state.json is last)."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())


def wait_for_checkpoint(process: subprocess.Popen, folder: Path, after: int,
                        timeout: float = 90) -> int:
    """Poll until a checkpoint newer than step ``after`` is complete; its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newer = [s for s in complete_checkpoints(folder) if s > after]
        if newer:
            return newer[0]
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no checkpoint after step {after} in {timeout} s")


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / ADAPTER)


def test_ctrl_c_then_sigkill_then_resume_ends_bit_identical(tiny_model_dir, toy_data_dir,
                                                            tmp_path) -> None:
    steps = 40
    args = ["train", "--model", tiny_model_dir, "--train_file", f"{toy_data_dir}/train.jsonl",
            "--method", "random", "--num_neurons", "6", "--max_length", "64",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--save_steps", "2", "--save_total_limit", "3",
            "--max_steps", str(steps)]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run = start([*args, "--output_dir", str(straight)], tmp_path / "straight.log")
    assert finish(run) == 0, (tmp_path / "straight.log").read_text()[-2000:]

    # 1. Ctrl-C: a checkpoint at the current step, a line saying how to go on, status 130.
    run = start([*args, "--output_dir", str(broken)], tmp_path / "int.log")
    wait_for_checkpoint(run, broken, after=0)
    run.send_signal(signal.SIGINT)
    assert finish(run) == 130
    log = (tmp_path / "int.log").read_text()
    assert "rerun with --resume" in log and "Traceback" not in log
    stopped = complete_checkpoints(broken)[-1]
    assert 0 < stopped < steps and not (broken / ADAPTER).exists()

    # 2. --resume, then SIGKILL (no handler can run), as a crash or an OOM killer would.
    run = start([*args, "--output_dir", str(broken), "--resume"], tmp_path / "kill.log")
    wait_for_checkpoint(run, broken, after=stopped)
    run.send_signal(signal.SIGKILL)
    assert finish(run) == -signal.SIGKILL
    assert not (broken / ADAPTER).exists()
    # A kill while a checkpoint is being written leaves it without trainer_state.json.
    last = complete_checkpoints(broken)[-1]
    partial = broken / f"checkpoint-{last + 2}"
    if not partial.exists():
        shutil.copytree(broken / f"checkpoint-{last}", partial)
        (partial / "trainer_state.json").unlink()
        (partial / ADAPTER).write_bytes((partial / ADAPTER).read_bytes()[:100])

    # 3. --resume to the end: the partial checkpoint is skipped, the result is exact.
    run = start([*args, "--output_dir", str(broken), "--resume"], tmp_path / "resume.log")
    assert finish(run) == 0, (tmp_path / "resume.log").read_text()[-2000:]
    assert "incomplete" in (tmp_path / "resume.log").read_text()
    expected, actual = adapter(straight), adapter(broken)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert not list(broken.rglob("*.tmp-*"))


def test_ctrl_c_during_select_writes_nothing(tiny_model_dir, toy_data_dir, tmp_path) -> None:
    output = tmp_path / "neurons.safetensors"
    run = start(["select", "--model", tiny_model_dir, "--scorer", "probe", "--steps", "100000",
                 "--neurons", "4", "--data", toy_data_dir, "--max_length", "64",
                 "--output", str(output)], tmp_path / "select.log")
    log = tmp_path / "select.log"
    deadline = time.monotonic() + 90
    while "probe" not in log.read_text() or "budget" not in log.read_text():
        assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    time.sleep(0.3)  # inside the probe's training loop
    run.send_signal(signal.SIGINT)
    assert finish(run) == 130
    text = log.read_text()
    assert "neft select: interrupted" in text and "Traceback" not in text
    assert list(tmp_path.iterdir()) == [log]  # no output, no temporary file


# ----------------------------------------------------------------- one run per folder, resume


def _train_argv(model: str, data: str, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", model, "--method", "random", "--num_neurons", "4",
            "--train_file", data, "--output_dir", str(out), "--max_length", "64",
            "--per_device_train_batch_size", "8", "--logging_steps", "1", *extra]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_a_second_train_into_a_busy_folder_is_refused(tiny_model_dir, toy_data_dir, tmp_path,
                                                      capsys) -> None:
    """The folder's lock is held (as by a `neft train` running there): a second run gets
    one line and exit 2 and writes nothing; the check and the claim are no longer a race."""
    from neft.cli import main
    from neft.core.io import folder_lock

    out = tmp_path / "run"
    with folder_lock(str(out), "held by the test"):
        before = _files(out)
        code = main(_train_argv(tiny_model_dir, f"{toy_data_dir}/train.jsonl", out,
                                "--max_steps", "1"))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith(f"neft train: error: another neft train is writing into {out}")
        assert _files(out) == before
    assert not out.exists()  # the lock's folder goes with it when nothing else is in it
    assert main(_train_argv(tiny_model_dir, f"{toy_data_dir}/train.jsonl", out,
                            "--max_steps", "1")) == 0
    assert not (out / ".neft.lock").exists() and (out / ADAPTER).is_file()


def test_resume_refuses_changed_data_and_leaves_a_finished_run_alone(tiny_model_dir,
                                                                     toy_data_dir, tmp_path,
                                                                     capsys) -> None:
    """24 records at batch 8 are 3 steps an epoch; --max_steps 7 ends inside an epoch.
    Resuming that finished run used to train step 8 (at lr 0) and rewrite every output;
    resuming on edited data trained a mix of two datasets without a word."""
    import json

    from neft.cli import main

    data = tmp_path / "train.jsonl"
    shutil.copy(f"{toy_data_dir}/train.jsonl", data)
    out = tmp_path / "run"
    argv = _train_argv(tiny_model_dir, str(data), out, "--max_steps", "7")
    assert main(argv) == 0
    capsys.readouterr()
    before = _files(out)
    assert main([*argv, "--resume"]) == 0
    assert "is finished (step 7 of max_steps 7); nothing to resume" in capsys.readouterr().err
    assert _files(out) == before
    assert json.loads((out / "neft_run.json").read_text())["result"]["global_step"] == 7
    # a run recorded before an option existed (torch_compile) was made without it
    record = json.loads((out / "neft_run.json").read_text())
    del record["torch_compile"]
    (out / "neft_run.json").write_text(json.dumps(record))
    before = _files(out)
    assert main([*argv, "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    assert main([*argv, "--resume", "--torch_compile", "true"]) == 2
    assert "option torch_compile differs from the run" in capsys.readouterr().err

    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    assert main([*argv[:-1], "9", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume: the training data differs from the data the run" in err[0]
    assert _files(out) == before
