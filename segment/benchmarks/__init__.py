"""Measurements: each a program of its own (`segment benchmark NAME`, `scripts/*.py`).

- `losses`: every loss on the same network, data and steps (`scripts/benchmark_losses.py`).
- `real`: our recipe against a plain Keras U-Net at equal wall-clock time on photographs
  (`scripts/benchmark_real.py`).
- `speed`: training and prediction speed against the stock Keras pieces
  (`scripts/benchmark_speed.py`).
- `robustness`: masks under noise, blur and low contrast (`scripts/evaluate_robustness.py`).
- `serving`: the HTTP API under concurrent requests (`scripts/loadtest_serve.py`).
- `grouping`: how well `--groups auto` finds known groups of images
  (`scripts/benchmark_grouping.py`).
"""
