"""The training-step profile (`segment benchmark profile`)."""

import json

import pytest

from segment.benchmarks.profile import main, sum_onednn_convolutions, sum_onednn_log

pytestmark = pytest.mark.slow  # a few compiled models


def test_onednn_lines_are_summed_per_kernel_after_the_warm_up():
    lines = [
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,x,9.0",
        "--- timed steps ---",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,x,1.5",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,brg,x,7.0",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,x,2.5",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,x,0.5",
        "some other log line",
    ]
    assert sum_onednn_log(lines, steps=2) == {
        "convolution brg_conv_fwd:avx512_core_bf16": {"ms_per_step": 2.0, "calls_per_step": 1.0},
        "reorder jit:uni": {"ms_per_step": 0.25, "calls_per_step": 0.5},
    }


def test_onednn_convolutions_are_summed_per_pass_with_their_flops():
    head = "onednn_verbose,v1,primitive,exec,cpu,convolution,brg:avx512_core_bf16,"
    lines = [
        "--- timed steps ---",
        head + "forward_training,src:bf16,alg:convolution_direct,"
        "mb8_ic16oc32_ih64oh64kh3sh1dh0ph1_iw64ow64kw3sw1dw0pw1,2.0",
        head + "backward_weights,src:bf16,alg:convolution_direct,"
        "mb8_ic16oc32_ih64oh64kh3sh1dh0ph1_iw64ow64kw3sw1dw0pw1,6.0",
        head + "forward_training,src:bf16,alg:convolution_direct,"
        "g2mb1_ic8oc8_ih10oh10kh1sh1dh0ph0_iw10ow10kw1sw1dw0pw0,0.5",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,x,0.5",
    ]
    # 2 FLOP x batch 8 x 64 x 64 outputs x 32 channels x 16 inputs x 3 x 3 = 301,989,888;
    # the grouped 1x1: 2 x 10 x 10 x 8 x (8 / 2) = 6,400.
    assert sum_onednn_convolutions(lines, steps=2) == {
        "backward (weights) 3x3": {"ms_per_step": 3.0, "gflop_per_step": 0.151, "gflops": 50},
        "forward 3x3": {"ms_per_step": 1.0, "gflop_per_step": 0.151, "gflops": 151},
        "forward 1x1": {"ms_per_step": 0.25, "gflop_per_step": 0.0, "gflops": 0},
    }


def test_the_quick_profile_times_every_part(tmp_path, capsys):
    path = tmp_path / "profile.json"
    assert main(["--quick", "--steps", "1", "--repeats", "1", "--json", str(path)]) == 0
    figures = json.loads(path.read_text())
    assert set(figures["seconds"]) == {
        "input pipeline", "forward", "forward + loss + gradients", "the same, MSE loss",
        "the same, no normalisation", "train_on_batch (no input pipeline)", "fit on the stream"}
    assert all(seconds > 0 for seconds in figures["seconds"].values())
    assert figures["gflop_per_step"] > 0
    assert "| fit on the stream |" in capsys.readouterr().out
    # Twice the width: four times the convolutions' work, but for the 3-channel stem and the
    # 1-channel head, which only double.
    wider = tmp_path / "wider.json"
    assert main(["--quick", "--steps", "1", "--repeats", "1", "--base-filters", "8",
                 "--json", str(wider)]) == 0
    ratio = json.loads(wider.read_text())["gflop_per_step"] / figures["gflop_per_step"]
    assert 3.5 < ratio < 4, ratio
    assert json.loads(wider.read_text())["config"]["base_filters"] == 8
    # Twice the batch and twice the side: eight times the work, every convolution's.
    bigger = tmp_path / "bigger.json"
    assert main(["--quick", "--steps", "1", "--repeats", "1", "--batch-size", "4",
                 "--size", "64", "--json", str(bigger)]) == 0
    bigger = json.loads(bigger.read_text())
    assert bigger["gflop_per_step"] == pytest.approx(8 * figures["gflop_per_step"])
    assert (bigger["config"]["batch_size"], bigger["config"]["size"]) == (4, 64)
    assert bigger["images_per_second"] == pytest.approx(4 / bigger["seconds"]["fit on the stream"])
    with pytest.raises(SystemExit):
        main(["--depth", "0"])
    assert "--depth must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--quick", "--size", "30"])
    assert "--size must be a multiple of 4 (2 ** depth), got 30" in capsys.readouterr().err
