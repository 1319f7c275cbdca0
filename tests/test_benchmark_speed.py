"""The speed benchmark: its quick run end to end, its table, its arithmetic."""

import importlib
import json
import os

import keras
import numpy as np
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
    "default_gflop_per_image",
    "train_default_float32_img_s",
    "train_default_mixed_bfloat16_img_s",
    "train_default_float32_gflops",
    "train_default_mixed_bfloat16_gflops",
    "bf16_speedup_default",
    "early_gflop_per_image",
    "train_default_early_float32_img_s",
    "train_default_early_mixed_bfloat16_img_s",
    "train_default_run_float32_img_s",
    "train_default_run_mixed_bfloat16_img_s",
    "run_speedup_float32",
    "run_speedup_mixed_bfloat16",
    "train_default_run_float32_gflops",
    "train_default_run_mixed_bfloat16_gflops",
]


@pytest.fixture(scope="module")
def speed_script():
    return importlib.import_module("segment.benchmarks.speed")


@pytest.mark.slow
def test_quick_run_reports_figures_that_follow_from_its_own_samples(speed_script, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert speed_script.main(["--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for key in EXPECTED_NUMBERS:
        assert results[key] > 0, key
    assert results["settings"]["xla"] is False
    # Every figure is what the repeats it keeps make of it: medians, and medians of the ratios
    # within each repeat, recomputed here with numpy.
    samples = results["samples"]["train_img_s"]
    settings = speed_script.QUICK
    flops = 3 * speed_script.forward_flops(settings, settings["size"], settings["size"]) / 1e9
    assert results["training_gflop_per_image"] == pytest.approx(flops)
    for policy in ("float32", "mixed_bfloat16"):
        custom, stock = (np.array(samples[f"{kind}_{policy}"]) for kind in ("custom", "stock"))
        assert len(custom) == settings["repeats"]
        assert results[f"train_custom_{policy}_img_s"] == pytest.approx(np.median(custom))
        assert results[f"train_ratio_custom_stock_{policy}"] == pytest.approx(
            np.median(custom / stock))
        assert results[f"train_custom_{policy}_gflops"] == pytest.approx(np.median(custom) * flops)
    # The default network as train.py builds it (tiny here), on its own batches and size.
    default = speed_script.default_config(quick=True)
    assert results["default_network"] == {
        "size": 32, "batch_size": 2, "base_filters": 4, "depth": 2,
        "full_resolution": "light", "loss": "composite"}
    default_flops = 3 * speed_script.forward_flops(
        {"base_filters": 4, "depth": 2, "full_resolution": "light"}, 32, 32) / 1e9
    assert results["default_gflop_per_image"] == pytest.approx(default_flops)
    for policy in ("float32", "mixed_bfloat16"):
        rates = np.array(samples[f"default_{policy}"])
        assert results[f"train_default_{policy}_img_s"] == pytest.approx(np.median(rates))
        assert results[f"train_default_{policy}_gflops"] == pytest.approx(
            np.median(rates) * default_flops)
    # Over a run, three quarters of the steps at the early size (16 here): the time per image
    # is three quarters of the early image's time plus a quarter of the full one's.
    assert results["early_size"] == 16
    early_flops = 3 * speed_script.forward_flops(
        {"base_filters": 4, "depth": 2, "full_resolution": "light"}, 16, 16) / 1e9
    for policy in ("float32", "mixed_bfloat16"):
        early, full = (np.array(samples[f"default{kind}_{policy}"]) for kind in ("_early", ""))
        run = 1 / (0.75 / early + 0.25 / full)
        assert results[f"train_default_run_{policy}_img_s"] == pytest.approx(np.median(run))
        assert results[f"run_speedup_{policy}"] == pytest.approx(np.median(run / full))
        assert results[f"train_default_run_{policy}_gflops"] == pytest.approx(
            np.median(run) * (0.75 * early_flops + 0.25 * default_flops))
    model = speed_script.build_default("mixed_bfloat16", default)
    assert type(model.loss).__name__ == "CompositeLoss"
    assert type(model.optimizer).__name__ == "StepHalvingSGD"
    assert float(model.optimizer.learning_rate) == pytest.approx(default.lr)
    assert model.compute_dtype == "bfloat16"
    printed = capsys.readouterr().out
    ratios = [f"{results[f'train_ratio_custom_stock_{policy}']:.2f}"
              for policy in ("float32", "mixed_bfloat16")]
    assert f"| ratio custom / stock | {ratios[0]} | {ratios[1]} |" in printed
    assert str(out) in printed
    # The run leaves the global policy as it found it.
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_table_puts_each_figure_in_its_row_and_column():
    from segment.benchmarks.speed_table import markdown_table

    results = {key: float(index + 1) for index, key in enumerate(EXPECTED_NUMBERS)}
    results.update(
        early_size=64,
        default_network={"size": 128, "batch_size": 8, "loss": "composite"},
        settings={"size": 32, "batch_size": 4, "inference_size": 32, "inference_batch": 2,
                  "tiled_size": 96, "tile": 64, "xla": False, "repeats": 1},
        cpu={"peak_gflops_fp32": 64.0, "cores": 2, "nominal_ghz": 2.0,
             "flops_per_cycle_per_core": 16, "simd": "AVX2+FMA", "model": "a test CPU"},
    )
    table = markdown_table(results)
    assert "| training, custom (img/s, 32x32, batch 4) | 3.0 | 7.0 |" in table
    assert "| ratio custom / stock | 5.00 | 9.00 |" in table
    # GFLOP/s with its share of the fp32 peak: 6 of 64 is 9%, 10 of 64 is 16%.
    assert "| training GFLOP/s (% of fp32 peak) | 6.0 (9%) | 10.0 (16%) |" in table
    assert "training 11.00x (stock Keras 12.00x, the default network 28.00x)" in table
    assert ("| training, the default network as train.py builds it (img/s, 128x128, batch 8, "
            "composite loss) | 24.0 | 25.0 |") in table
    assert "| the same at 64x64, a run's early epochs (img/s) | 30.0 | 31.0 |" in table
    assert "| ratio over a run / every step at full size | 34.00 | 35.00 |" in table


@pytest.mark.parametrize("flags, simd, peak", [
    ("fpu avx2 fma avx512f", "AVX-512", 2 * 2.5 * 64),
    ("fpu avx2 fma", "AVX2+FMA", 2 * 2.5 * 32),
])
def test_the_cpu_peak_is_cores_times_clock_times_flops_per_cycle(monkeypatch, flags, simd, peak):
    from segment.benchmarks import machine

    cpuinfo = f"model name\t: Test CPU\ncpu MHz\t\t: 2500.000\nflags\t\t: {flags}\n"
    monkeypatch.setattr(machine, "Path", lambda path: type("Fake", (), {
        "read_text": staticmethod(lambda: cpuinfo)})())
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    cpu = machine.cpu_peak()
    assert (cpu["model"], cpu["cores"], cpu["simd"]) == ("Test CPU", 2, simd)
    assert cpu["peak_gflops_fp32"] == pytest.approx(peak)


def test_stock_twin_is_a_plain_keras_model_with_the_same_function(speed_script):
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
