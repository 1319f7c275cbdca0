"""Load test of the HTTP API (`segment serve`) on loopback: latency, throughput, errors and
memory growth.

Starts the server in its own process, warms it up, then sends --requests uploads from
--clients concurrent clients, cycling through images of mixed sizes (and so mixed costs), and
reports failed requests, p50/p95 latency per size and overall, requests per second, and the
server's resident memory after warm-up and after the run.
"""

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segment.cli.common import HelpFormatter, fail, positive
from segment.imageio import encode_png

SIZES = ((256, 256), (512, 512), (1024, 768), (128, 128))  # (width, height), cycled

EPILOG = """\
examples:
  python scripts/loadtest_serve.py --model runs/mine/model.keras
  python scripts/loadtest_serve.py --model runs/mine/model.onnx --requests 600 --clients 16 --json load.json
"""


def _picture(width, height, seed):
    rng = np.random.default_rng(seed)
    image = (rng.random((height, width, 3)) * 90).astype(np.uint8)
    image[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] += 140
    return encode_png(image)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resident_mb(pid):
    """Resident memory of a process, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _percentile(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def run(model, *, requests, clients, workers, warmup, timeout=120):
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could fill and stall it
    server = subprocess.Popen(
        [sys.executable, "-m", "segment", "serve", "--model", str(model), "--port", str(port),
         "--workers", str(workers)],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the server stopped: {log.read().strip()[-500:]}")
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer within the timeout")
            time.sleep(0.2)
        pictures = [(size, _picture(*size, seed)) for seed, size in enumerate(SIZES)]

        def send(index, client):
            size, data = pictures[index % len(pictures)]
            started = time.perf_counter()
            try:
                answer = client.post(f"{url}/api/segment", params={"output": "cutout"},
                                     files={"file": ("load.png", data, "image/png")})
                ok = answer.status_code == 200 and answer.content[:4] == b"\x89PNG"
            except httpx.HTTPError:
                ok = False
            return size, time.perf_counter() - started, ok

        def load(count):
            """`count` requests from `clients` concurrent clients; every result."""
            def client_loop(first):
                with httpx.Client(timeout=timeout) as client:
                    return [send(index, client) for index in range(first, count, clients)]

            with ThreadPoolExecutor(clients) as pool:
                return [result for part in pool.map(client_loop, range(clients)) for result in part]

        # Warm-up under the same concurrency, so that the server has traced every shape and
        # reached its working set (several large images at once) before memory is read.
        assert all(ok for _, _, ok in load(warmup)), "a warm-up request failed"
        warm_mb = resident_mb(server.pid)
        started = time.perf_counter()
        results = load(requests)
        elapsed = time.perf_counter() - started
        after_mb = resident_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    latencies = [seconds for _, seconds, ok in results if ok]
    report = {
        "model": str(model), "requests": requests, "clients": clients, "workers": workers,
        "warmup": warmup,
        "failed": sum(not ok for _, _, ok in results),
        "seconds": elapsed, "requests_per_second": len(results) / elapsed,
        "p50_s": _percentile(latencies, 50), "p95_s": _percentile(latencies, 95),
        "resident_mb_after_warm_up": warm_mb, "resident_mb_after_run": after_mb,
        "memory_growth_mb": after_mb - warm_mb, "per_size": {},
    }  # fmt: skip
    for size in SIZES:
        values = [seconds for s, seconds, ok in results if ok and s == size]
        report["per_size"][f"{size[0]}x{size[1]}"] = {
            "requests": len(values), "p50_s": _percentile(values, 50),
            "p95_s": _percentile(values, 95), "mean_s": statistics.fmean(values) if values else None,
        }  # fmt: skip
    return report


def markdown(report):
    lines = [
        f"{report['requests']} requests from {report['clients']} concurrent clients (after "
        f"{report['warmup']} warm-up requests sent the same way), "
        f"{report['workers']} server workers: {report['failed']} failed, "
        f"{report['requests_per_second']:.1f} requests/s, p50 {report['p50_s']:.2f} s, "
        f"p95 {report['p95_s']:.2f} s; resident memory {report['resident_mb_after_warm_up']:.0f} MB "
        f"after warm-up, {report['resident_mb_after_run']:.0f} MB after the run "
        f"({report['memory_growth_mb']:+.0f} MB).",
        "",
        "| image | requests | p50 latency (s) | p95 latency (s) |",
        "|---|---:|---:|---:|",
    ]
    for size, row in report["per_size"].items():
        lines.append(f"| {size} | {row['requests']} | {row['p50_s']:.2f} | {row['p95_s']:.2f} |")
    return "\n".join(lines)


def build_parser(prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, type=Path, metavar="PATH",
                        help="model file to serve (.keras, .onnx, .tflite, .xml)")
    parser.add_argument("--requests", type=positive, default=300, help="requests in all")
    parser.add_argument("--clients", type=positive, default=8, help="concurrent clients")
    parser.add_argument("--workers", type=positive, default=2, help="the server's --workers")
    parser.add_argument("--warmup", type=positive, default=48,
                        help="requests sent the same way before measuring (tracing, working set)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="also write the report as JSON")
    return parser


def main(argv=None, prog=None):
    args = build_parser(prog).parse_args(argv)
    if not args.model.is_file():
        return fail(f"{args.model}: no such model file")
    try:
        report = run(args.model, requests=args.requests, clients=args.clients,
                     workers=args.workers, warmup=args.warmup)
    except (RuntimeError, AssertionError, OSError) as error:
        return fail(error)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["failed"] == 0 else 1

