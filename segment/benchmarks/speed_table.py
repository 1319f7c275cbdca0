"""The speed benchmark's results as a Markdown table, with notes on how they were measured."""

__all__ = ["POLICIES", "markdown_table"]

POLICIES = ("float32", "mixed_bfloat16")  # the dtype policies measured, in table order


def _percent(gflops, peak):
    return f"{gflops:.1f} ({100 * gflops / peak:.0f}%)" if peak else f"{gflops:.1f}"


def markdown_table(results):
    """The results as a Markdown table plus a few lines of notes."""
    settings, cpu = results["settings"], results["cpu"]
    size, batch_size = settings["size"], settings["batch_size"]
    peak = cpu["peak_gflops_fp32"]
    rows = [
        (f"training, custom (img/s, {size}x{size}, batch {batch_size})",
         "{:.1f}", "train_custom_{}_img_s"),
        ("training, stock Keras (img/s)", "{:.1f}", "train_stock_{}_img_s"),
        ("ratio custom / stock", "{:.2f}", "train_ratio_custom_stock_{}"),
    ]
    if settings["xla"]:
        rows.append(("training, custom with XLA (img/s)", "{:.1f}", "train_custom_{}_xla_img_s"))
        rows.append(("XLA speed-up", "{:.2f}", "xla_speedup_{}"))
    rows.append((f"inference (img/s, {settings['inference_size']}x{settings['inference_size']})",
                 "{:.1f}", "inference_{}_img_s"))
    rows.append((f"tiled prediction, one {settings['tiled_size']}x{settings['tiled_size']} "
                 f"image (s, tile {settings['tile']})", "{:.2f}", "tiled_{}_seconds"))
    default = results["default_network"]
    rows.append((f"training, the default network as train.py builds it (img/s, "
                 f"{default['size']}x{default['size']}, batch {default['batch_size']}, "
                 f"{default['loss']} loss)", "{:.1f}", "train_default_{}_img_s"))
    rows.append((f"the same at {results['early_size']}x{results['early_size']}, a run's "
                 "early epochs (img/s)", "{:.1f}", "train_default_early_{}_img_s"))
    rows.append(("over a run, early epochs included (img/s)", "{:.1f}",
                 "train_default_run_{}_img_s"))
    rows.append(("ratio over a run / every step at full size", "{:.2f}", "run_speedup_{}"))
    lines = ["| measurement | float32 | mixed_bfloat16 |", "|---|---:|---:|"]
    for label, number, key in rows:
        cells = [number.format(results[key.format(policy)]) for policy in POLICIES]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    for label, key in (("training GFLOP/s (% of fp32 peak)", "train_custom_{}_gflops"),
                       ("training GFLOP/s, the default network", "train_default_{}_gflops"),
                       ("training GFLOP/s, the default network over a run",
                        "train_default_run_{}_gflops"),
                       ("inference GFLOP/s (% of fp32 peak)", "inference_{}_gflops")):
        cells = [_percent(results[key.format(policy)], peak) for policy in POLICIES]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    backends = [name for name in results.get("backends", POLICIES) if name not in POLICIES]
    if backends:
        lines += [
            "",
            f"| inference backend | img/s ({settings['inference_size']}x"
            f"{settings['inference_size']}, batch {settings['inference_batch']}) | x Keras float32 "
            f"| one {settings['tiled_size']}x{settings['tiled_size']} image, tiled (s) | "
            "x Keras float32 |",
            "|---|---:|---:|---:|---:|",
        ]
        labels = {"float32": "Keras float32", "mixed_bfloat16": "Keras mixed_bfloat16",
                  "onnxruntime": "onnxruntime (float32)", "litert": "LiteRT (float32)",
                  "openvino": f"OpenVINO ({results.get('openvino_precision', 'its default')})",
                  "openvino_float32": "OpenVINO (float32)"}
        for name in [*POLICIES, *backends]:
            lines.append(
                f"| {labels.get(name, name)} | {results[f'inference_{name}_img_s']:.1f} | "
                f"{results[f'inference_{name}_speedup']:.2f} | "
                f"{results[f'tiled_{name}_seconds']:.2f} | {results[f'tiled_{name}_speedup']:.2f} |"
            )
    notes = [
        "",
        f"- mixed_bfloat16 / float32 speed-up: training {results['bf16_speedup_custom']:.2f}x "
        f"(stock Keras {results['bf16_speedup_stock']:.2f}x, the default network "
        f"{results['bf16_speedup_default']:.2f}x), inference "
        f"{results['inference_bf16_speedup']:.2f}x.",
        f"- Loss: the throughput rows use MSE for both models. The composite loss (MSE + soft Dice + TV "
        f"excess) trains at {results['train_custom_float32_composite_img_s']:.1f} "
        f"img/s in float32: {results['composite_loss_cost_ratio']:.2f}x the time of MSE.",
        f"- Synthetic generator (tf.data, {size}x{size}): {results['generator_img_s']:.0f} img/s.",
        f"- FLOPs counted from the convolutions: {results['training_gflop_per_image']:.2f} GFLOP "
        f"per training image (3x forward; the default network "
        f"{results['default_gflop_per_image']:.2f}), "
        f"{results['inference_gflop_per_image']:.2f} GFLOP per "
        f"{settings['inference_size']}x{settings['inference_size']} inference image.",
        f"- Nominal fp32 peak {peak:.0f} GFLOP/s = {cpu['cores']} cores x "
        f"{cpu['nominal_ghz']:.2f} GHz (nominal, /proc/cpuinfo) x "
        f"{cpu['flops_per_cycle_per_core']} FLOP/cycle ({cpu['simd']}, 2 FMA units); CPU: "
        f"{cpu['model']}.",
        f"- Medians of {settings['repeats']} interleaved repeats (ratios: median of the ratios "
        f"within each repeat); training rates exclude each fit's first batch.",
    ]
    return "\n".join(lines + notes)
