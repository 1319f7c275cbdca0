"""scripts/benchmark_speed.py in its quick mode: it runs end to end and reports every figure."""

import importlib
import json

import keras
import pytest

EXPECTED_NUMBERS = [
    "training_gflop_per_image",
    "inference_gflop_per_image",
    "train_custom_float32_img_s",
    "train_stock_float32_img_s",
    "train_ratio_custom_stock_float32",
    "train_custom_float32_gflops",
    "train_custom_mixed_bfloat16_img_s",
    "train_stock_mixed_bfloat16_img_s",
    "train_ratio_custom_stock_mixed_bfloat16",
    "train_custom_mixed_bfloat16_gflops",
    "bf16_speedup_custom",
    "bf16_speedup_stock",
    "train_custom_float32_composite_img_s",
    "composite_loss_cost_ratio",
    "inference_float32_img_s",
    "inference_mixed_bfloat16_img_s",
    "inference_float32_gflops",
    "inference_mixed_bfloat16_gflops",
    "inference_bf16_speedup",
    "tiled_float32_seconds",
    "tiled_mixed_bfloat16_seconds",
    "generator_img_s",
]


@pytest.fixture(scope="module")
def speed_script():
    return importlib.import_module("segment.benchmarks.speed")


def test_quick_run_writes_every_figure(speed_script, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert speed_script.main(["--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for key in EXPECTED_NUMBERS:
        assert results[key] > 0, key
    assert results["cpu"]["peak_gflops_fp32"] > 0
    assert results["settings"]["xla"] is False
    printed = capsys.readouterr().out
    assert "| ratio custom / stock |" in printed
    assert str(out) in printed
    # The run leaves the global policy as it found it.
    assert keras.mixed_precision.global_policy().name == "float32"


def test_stock_twin_is_a_plain_keras_model_with_the_same_function(speed_script):
    import numpy as np

    from segment.model import SegmentationModel, build_model

    custom = build_model(base_filters=4, depth=2)
    stock = speed_script.stock_twin(custom)
    assert isinstance(custom, SegmentationModel)
    assert not isinstance(stock, SegmentationModel)
    assert stock.count_params() == custom.count_params()
    assert not any(type(layer).__name__ == "InstanceNormalize" for layer in stock.layers)
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(stock(images), custom(images), atol=1e-5)


def test_forward_flops_by_hand(speed_script):
    # depth 1, 4 filters, 8x8: stem 3->4 (3x3), block 4->4 (two 3x3), bottleneck at 4x4
    # 4->8 (1x1 projection, two 3x3), merge 12->4 (1x1) and block 4->4 (two 3x3) at 8x8,
    # and the 1x1 4->1 output.
    settings = {"base_filters": 4, "depth": 1, "full_resolution": "residual"}
    full, half = 8 * 8, 4 * 4
    expected = 2 * (
        full * 3 * 4 * 9
        + 2 * full * 4 * 4 * 9
        + half * (4 * 8 + 4 * 8 * 9 + 8 * 8 * 9)
        + full * 12 * 4
        + 2 * full * 4 * 4 * 9
        + full * 4 * 1
    )
    assert speed_script.forward_flops(settings, 8, 8) == expected


def test_help_shows_defaults_and_an_example(speed_script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        speed_script.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--quick" in text
    # The sizes that depend on --quick state both of their values.
    assert "unset: 3, or 1 with" in " ".join(text.split())
