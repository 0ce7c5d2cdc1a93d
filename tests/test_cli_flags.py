"""cli/flags.py: flags named after config fields and parameters, and errors that name the flag."""

from __future__ import annotations

import argparse

import pytest

from jitkit.cli.flags import call_with_flags, flag_error, given_flags


def test_given_flags_takes_fields_and_renames_and_skips_what_was_not_given():
    args = argparse.Namespace(epochs=3, seed=None, steps=7, out="x", func=print)
    assert given_flags(args, ["epochs", "seed", "lr"], {"steps": "sample_steps"}) == {
        "epochs": 3,
        "sample_steps": 7,
    }


def test_flag_error_rewrites_the_parameters_a_library_error_names():
    e = flag_error(
        FileExistsError("out /x is not empty; re-run with overwrite=True, or with strict=False to skip"),
        {"out": "out", "overwrite": "overwrite", "strict": "strict"},
    )
    assert isinstance(e, FileExistsError)
    assert str(e) == "--out /x is not empty; re-run with --overwrite, or without --strict to skip"
    e = flag_error(ValueError("FID needs statistics: give ref_stats=S.npz"), {"ref_stats": "eval_ref"})
    assert str(e) == "FID needs statistics: give --eval-ref S.npz"
    # a parameter name inside another word is left alone
    assert str(flag_error(ValueError("img_size=3 is odd"), {"size": "size"})) == "img_size=3 is odd"


def test_call_with_flags_passes_matching_flags_and_names_them_in_errors():
    def prepare(data: str, size: int, *, overwrite: bool = False) -> tuple:
        if size < 1:
            raise ValueError(f"size must be positive, found {size}")
        return data, size, overwrite

    args = argparse.Namespace(data="d", size=4, overwrite=True, debug=False)
    assert call_with_flags(prepare, args) == ("d", 4, True)
    with pytest.raises(ValueError, match="^--size must be positive, found 0"):
        call_with_flags(prepare, argparse.Namespace(data="d", size=0))
