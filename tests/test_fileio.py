"""jitkit.fileio: atomic writes leave the old file or the new one, never a partial one or a stray temp file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jitkit.fileio import atomic_save_figure, atomic_write_bytes, atomic_write_text, atomic_write_with


def test_failed_writer_keeps_the_previous_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old contents")

    def crash(f) -> None:
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_with(target, crash)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_text_npz_and_figure_round_trip(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    arr = np.arange(6).reshape(2, 3)
    atomic_write_with(tmp_path / "x.npz", lambda f: np.savez_compressed(f, a=arr))
    assert np.array_equal(np.load(tmp_path / "x.npz")["a"], arr)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    atomic_save_figure(fig, tmp_path / "f.png", dpi=50)
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "sub", "x.npz"]


def test_written_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    import os
    import stat

    from jitkit.fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "a.json", "{}")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644  # mkstemp alone gives 0o600
        os.umask(0o077)
        assert stat.S_IMODE(atomic_write_text(tmp_path / "b.json", "{}").stat().st_mode) == 0o600
    finally:
        os.umask(old)
