"""`--quantize` and `--calibration` of `dinoserve export` and `import`."""

from __future__ import annotations

import pytest

from dinoserve.cli import _quantize, build_parser


def test_quantize_takes_commas_and_repeats_in_order():
    args = build_parser().parse_args(
        ["export", "run", "--quantize", "int8", "--quantize", "int8-static,int8-nncf"]
    )
    assert _quantize(args) == ["int8", "int8-static", "int8-nncf"]
    assert args.calibration is None
    args = build_parser().parse_args(["import", "vit", "--name", "n", "--calibration", "d"])
    assert _quantize(args) == [] and args.calibration == "d"


def test_an_unknown_variant_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "run", "--quantize", "int4"])
    assert "int8, int8-static, int8-nncf" in capsys.readouterr().err
