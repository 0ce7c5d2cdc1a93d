"""Training checkpoints: the saved position and where a run continues after its effective batch changed."""

from __future__ import annotations

from jitkit.train.state import resumed_step, run_position


def test_run_position():
    assert run_position(25, 10, 64, 2) == {
        "step": 25,
        "epoch": 2,
        "step_in_epoch": 5,
        "images_seen": 1600,
        "effective_batch": 64,
        "world_size": 2,
    }


def test_resumed_step_keeps_the_epoch_position_in_images():
    assert resumed_step(37, 64, 64, 3200) == 37
    # 3200 images: 50 steps/epoch at 64, 25 at 128; step 60 at 64 = epoch 1 + 10 steps = 640 images in
    assert resumed_step(60, 64, 128, 3200) == 25 + 5
    assert resumed_step(61, 64, 128, 3200) == 25 + 6  # 704 images in: the next whole step of 128
    assert resumed_step(30, 128, 64, 3200) == 50 + 10
    assert resumed_step(0, 64, 32, 3200) == 0
