"""Ctrl-C / SIGTERM: the first one finishes the step and saves a checkpoint, a second one stops at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from jitkit.checkpoint import load_checkpoint
from jitkit.train.run_folder import read_log
from jitkit.train.signals import SignalFlag

pytestmark = pytest.mark.env_sensitive  # real signals, delivered by the OS


def test_signal_flag_records_the_first_signal_and_a_second_interrupts():
    before = signal.getsignal(signal.SIGTERM)
    flag = SignalFlag()
    flag.install()
    try:
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert flag.requested and flag.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGTERM) is before  # the second signal already put the handlers back
    assert SignalFlag().name == "a signal on another rank"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_exits_with_the_shells_code(tmp_path, tiny, sig):
    out = tmp_path / "sig"
    sets = [f"model.{k}={v}" for k, v in tiny.RUN_MODEL.items() if k != "name"]
    cmd = [
        "train",
        "--model",
        "JiT-T/4",
        "--out",
        str(out),
        "--set",
        "data.per_class=2",
        "--set",
        "sampler.steps=2",
    ]
    cmd += ["--batch-size", "4", "--no-eval", "--no-progress", "--threads", "1", *sets]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jitkit", *cmd, "--epochs", "1000", "--log-every", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(read_log(out / "log.jsonl")) < 2:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(sig)
        o, e = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # saved, then 128 + the signal (130, 143) as a shell reports it: `jitkit train && jitkit sample` stops
    assert proc.returncode == 128 + sig, e
    assert f"interrupted by {signal.Signals(sig).name}" in o
    ck = load_checkpoint(out)
    assert ck.step >= 2 and ck.meta["reason"] == "interrupted"
