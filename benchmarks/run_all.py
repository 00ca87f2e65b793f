"""Run every throughput measurement in fresh processes and compare against the targets.

    python benchmarks/run_all.py [--runs 5] [--dir DIR] [--keep] [--markdown results.md]
                                 [--cases NAME,NAME...] [--preset all|fresh] [--chart spread.png]

``--preset fresh`` (the fresh-VM comparison): every loader next to its baselines and the first-touch
cost of fresh memory, each case one fresh process per round; per case min / median / p90 / max of
wall time, CPU, system time and minor/major faults per GiB (getrusage in the child), the load average
of each run, the THP settings and ``uptime`` in the machine line, and a PNG chart of each loader's
spread (matplotlib, the ``bench`` extra; skipped with a note without it).

Builds the 1 GiB synthetic model (bench_model.py) in a temporary directory, or reuses ``--dir`` if
it already holds one; reads every file once so the page cache is hot; then runs round after round:
each round starts one fresh process per case (bench_worker.py), in the same order, so that load
from other users of the machine spreads over all cases alike. Each case's figure is the median over
the rounds. Peak RSS is measured in separate fresh processes (``--rss``).

Prints one table of medians (seconds, GB/s of plaintext, spread) and one of the targets: each ratio
is computed from medians of the same run, so machines and noise cancel as far as they can. The
"CPU s / wall s" column (user+sys time of all the process's threads over wall time, median) shows
how much of the machine a case actually got: about 2 on an idle 2-core machine for a 2-thread case,
well under 1 when other work is competing for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_cases  # noqa: E402
import bench_model  # noqa: E402

RSS_CASES = ("seal_numpy", "safetensors_numpy", "hand_written", "cryptotensors_numpy")

# (label, numerator case, denominator case, minimum) - ratio = seconds(num) / seconds(den)
TARGETS = [
    ("1. engine ipsec-mb vs memory bound (copyto)", "copy", "raw_ipsecmb", 0.75),
    ("1. engine OpenSSL vs memory bound (info)", "copy", "raw_openssl", None),
    ("2. vs safetensors.numpy (unencrypted)", "safetensors_numpy", "seal_numpy", 3.0),
    ("3. vs hand-written AESGCM loader", "hand_written", "seal_numpy", 1.5),
    ("4. vs cryptotensors.numpy", "cryptotensors_numpy", "seal_numpy", 2.0),
    ("4. vs cryptotensors.torch", "cryptotensors_torch", "seal_torch", 2.0),
    ("5. C engine vs pure-Python engine (info)", "seal_python_slice", "seal_c_slice", None),
    ("6. OpenSSL all threads vs 1 (engine)", "raw_openssl_1t", "raw_openssl", 1.6),
    ("6. OpenSSL all threads vs 1 (load_file)", "seal_numpy_openssl_1t", "seal_numpy_openssl", 1.6),
    ("6. ipsec-mb all threads vs 1 (engine, info)", "raw_ipsecmb_1t", "raw_ipsecmb", None),
    ("6. ipsec-mb all threads vs 1 (load_file, info)", "seal_numpy_ipsecmb_1t", "seal_numpy", None),
]
RSS_TARGET = 1.10

# --preset fresh: the fresh-VM comparison (issue 13), every loader next to its baselines, plus the
# first-touch cost of fresh memory measured by the same fresh processes.
FRESH_CASES = ("seal_numpy", "seal_numpy_lazy", "seal_numpy_auto", "seal_numpy_always",
               "seal_numpy_pooled", "safetensors_numpy", "cryptotensors_numpy", "hand_written",
               "seal_torch", "safetensors_torch", "cryptotensors_torch",
               "touch_4k", "touch_thp", "populate_never", "populate_always", "populate_auto")
# (label, numerator, denominator, minimum ratio of medians) on the fresh-VM run
FRESH_TARGETS = [
    ("numpy vs cryptotensors.numpy", "cryptotensors_numpy", "seal_numpy", 1.5),
    ("numpy vs safetensors.numpy", "safetensors_numpy", "seal_numpy", 2.0),
    ("torch vs cryptotensors.torch", "cryptotensors_torch", "seal_torch", 1.5),
    ("torch vs safetensors.torch", "safetensors_torch", "seal_torch", 2.0),
    ("numpy, new memory vs old (MADV_HUGEPAGE, lazy)", "seal_numpy_lazy", "seal_numpy", None),
]
TAIL_TARGET = 1.3  # max / median, each sealtensors loader
CHART_CASES = ("seal_numpy", "seal_numpy_lazy", "seal_numpy_auto", "seal_numpy_always",
               "seal_numpy_pooled", "safetensors_numpy", "cryptotensors_numpy", "hand_written",
               "seal_torch", "safetensors_torch", "cryptotensors_torch")


def warm_page_cache(directory: Path) -> None:
    piece = bytearray(16 << 20)
    for path in sorted(directory.iterdir()):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(piece):
                pass


def run_worker(directory: Path, case: str, *extra: str) -> dict:
    command = [sys.executable, str(HERE / "bench_worker.py"), str(directory), case, *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict:
    info = {"python": platform.python_version(), "kernel": platform.release(),
            "cpus": os.cpu_count()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        info["memory_gib"] = round(int(f.readline().split()[1]) / (1 << 20), 1)
    try:
        import ssl

        info["python_ssl"] = ssl.OPENSSL_VERSION
        from cryptography.hazmat.backends.openssl.backend import backend

        info["cryptography_openssl"] = backend.openssl_version_text()
        import cryptography

        info["cryptography"] = cryptography.__version__
    except Exception:  # noqa: BLE001 - informational only
        pass
    try:
        import sealtensors
        from sealtensors.engine import cengine as _cengine

        info["sealtensors"] = sealtensors.__version__
        info["engine"] = sealtensors.engine_info()
        info["providers"] = _cengine.available_providers()
    except Exception:  # noqa: BLE001
        pass
    for name in ("safetensors", "cryptotensors", "numpy", "torch"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            pass
    with open("/proc/loadavg") as f:
        info["loadavg_at_start"] = f.read().split()[:3]
    info["uptime_at_start"] = uptime()
    for name in ("enabled", "defrag", "khugepaged/defrag"):
        try:
            with open(f"/sys/kernel/mm/transparent_hugepage/{name}") as f:
                info[f"thp_{name.replace('/', '_')}"] = f.read().strip()
        except OSError:
            info[f"thp_{name.replace('/', '_')}"] = "unavailable"
    return info


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        with open("/proc/loadavg") as f:
            return "load average " + " ".join(f.read().split()[:3])


def p90(values: list[float]) -> float:
    """The 90th percentile (inclusive method: it stays within [min, max] for few runs)."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for case, records in results.items():
        seconds = [r["seconds"] * r["scale"] for r in records]
        nbytes = records[0]["nbytes"] * records[0]["scale"]
        median = statistics.median(seconds)
        cpu = statistics.median(r["cpu_seconds"] / r["seconds"] for r in records)
        summary[case] = {"median": median, "min": min(seconds), "max": max(seconds),
                         "p90": p90(seconds), "gbps": nbytes / median / 1e9, "runs": len(seconds),
                         "cpu_per_wall": cpu, "seconds": seconds,
                         "cpu_median": statistics.median(r["cpu_seconds"] * r["scale"]
                                                         for r in records)}
        if "sys_seconds" in records[0]:
            gib = nbytes / (1 << 30)
            sys_seconds = [r["sys_seconds"] * r["scale"] for r in records]
            summary[case].update({
                "sys_median": statistics.median(sys_seconds), "sys_max": max(sys_seconds),
                "user_median": statistics.median(r["user_seconds"] * r["scale"] for r in records),
                "minflt_per_gib": statistics.median(r["minflt"] * r["scale"] for r in records) / gib,
                "majflt": max(r["majflt"] for r in records),
                "loadavg_median": statistics.median(r.get("loadavg", 0.0) for r in records)})
    return summary


def spread_table(summary: dict) -> str:
    """min / median / p90 / max of wall time, with CPU, system time and faults (medians)."""
    rows = ["| case | min s | median s | p90 s | max s | max/median | CPU s | sys s (max) | "
            "user s | minor faults / GiB | major | load | runs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in bench_cases.CASES:
        if name not in summary or "sys_median" not in summary[name]:
            continue
        s = summary[name]
        rows.append(f"| `{name}` | {s['min']:.3f} | {s['median']:.3f} | {s['p90']:.3f} | "
                    f"{s['max']:.3f} | {s['max'] / s['median']:.2f} | {s['cpu_median']:.2f} | "
                    f"{s['sys_median']:.2f} ({s['sys_max']:.2f}) | {s['user_median']:.2f} | "
                    f"{s['minflt_per_gib']:.0f} | {s['majflt']} | {s['loadavg_median']:.1f} | "
                    f"{s['runs']} |")
    return "\n".join(rows)


def fresh_targets(summary: dict) -> str:
    rows = ["| target | wall ratio (medians) | CPU ratio (medians) | needed | result |",
            "|---|---:|---:|---:|---|"]
    for label, num, den, needed in FRESH_TARGETS:
        if num not in summary or den not in summary:
            continue
        ratio = summary[num]["median"] / summary[den]["median"]
        cpu = summary[num]["cpu_median"] / summary[den]["cpu_median"]
        status = "info" if needed is None else ("met" if ratio >= needed else "MISSED")
        rows.append(f"| {label} | {ratio:.2f}x | {cpu:.2f}x | "
                    f"{'-' if needed is None else f'>= {needed}x'} | {status} |")
    for name in ("seal_numpy", "seal_torch"):
        if name in summary:
            tail = summary[name]["max"] / summary[name]["median"]
            rows.append(f"| {name} max / median | {tail:.2f} | - | <= {TAIL_TARGET} | "
                        f"{'met' if tail <= TAIL_TARGET else 'MISSED'} |")
    return "\n".join(rows)


def draw_chart(summary: dict, path: Path, title: str) -> str:
    """A PNG of each loader's spread (every run as a dot, the median as a bar); a note instead
    when matplotlib (the ``bench`` extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install sealtensors[bench])"
    names = [n for n in CHART_CASES if n in summary]
    if not names:
        return "chart skipped: no loader cases in this run"
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(names) + 1.4))
    for row, name in enumerate(names):
        seconds = summary[name]["seconds"]
        colour = "tab:blue" if name.startswith("seal_") else "tab:grey"
        axes.scatter(seconds, [row] * len(seconds), s=18, color=colour, alpha=0.7, zorder=3)
        axes.plot([summary[name]["median"]] * 2, [row - 0.3, row + 0.3], color="black", lw=2, zorder=4)
        axes.plot([min(seconds), max(seconds)], [row, row], color=colour, lw=1, zorder=2)
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    axes.set_xlabel("wall seconds per load, one fresh process per dot (bar: median)")
    axes.set_xlim(left=0)
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"chart: {path}"


def tables(summary: dict, rss: dict[str, list[int]], model_bytes: int) -> tuple[str, str, list]:
    rows = ["| case | median s | GB/s | min s | max s | CPU s / wall s | runs |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, case in bench_cases.CASES.items():
        if name in summary:
            s = summary[name]
            rows.append(f"| {case.title} (`{name}`) | {s['median']:.3f} | {s['gbps']:.2f} | "
                        f"{s['min']:.3f} | {s['max']:.3f} | {s['cpu_per_wall']:.2f} | {s['runs']} |")
    verdicts = []
    target_rows = ["| target | ratio (median) | needed | result |", "|---|---:|---:|---|"]
    for label, num, den, needed in TARGETS:
        if num not in summary or den not in summary:
            continue
        ratio = summary[num]["median"] / summary[den]["median"]
        status = "info" if needed is None else ("met" if ratio >= needed else "MISSED")
        verdicts.append((label, ratio, needed, status))
        target_rows.append(f"| {label} | {ratio:.2f}x | "
                           f"{'-' if needed is None else f'>= {needed}x'} | {status} |")
    for case, deltas in rss.items():
        ratio = statistics.median(deltas) / model_bytes
        needed = RSS_TARGET if case == "seal_numpy" else None
        status = "info" if needed is None else ("met" if ratio <= needed else "MISSED")
        label = f"7. peak RSS over baseline / model bytes, {case}"
        verdicts.append((label, ratio, needed, status))
        target_rows.append(f"| {label} | {ratio:.2f} | {'-' if needed is None else f'<= {needed}'} "
                           f"| {status} |")
    return "\n".join(rows), "\n".join(target_rows), verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per case (default 5)")
    parser.add_argument("--dir", help="model directory (built there if it has no manifest)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary model directory")
    parser.add_argument("--markdown", help="also write the tables to this Markdown file")
    parser.add_argument("--json", help="also write every raw record to this JSON file")
    parser.add_argument("--cases", help="comma-separated subset of cases")
    parser.add_argument("--rss-runs", type=int, default=3)
    parser.add_argument("--preset", choices=("all", "fresh"), default="all",
                        help="fresh: the fresh-VM loaders, baselines and first-touch cases, with "
                             "spreads, system time, faults and a chart")
    parser.add_argument("--chart", help="PNG path for the spread chart (default: next to "
                                        "--markdown, or spread.png)")
    args = parser.parse_args(argv)

    default_cases = FRESH_CASES if args.preset == "fresh" else list(bench_cases.CASES)
    cases = args.cases.split(",") if args.cases else list(default_cases)
    unknown = set(cases) - set(bench_cases.CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")

    temporary = args.dir is None
    directory = Path(args.dir or tempfile.mkdtemp(prefix="sealtensors-bench-"))
    try:
        if not (directory / "manifest.json").exists():
            started = time.perf_counter()
            print(f"building the model in {directory} ...", file=sys.stderr, flush=True)
            bench_model.build(directory)
            print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        manifest = bench_model.load_manifest(directory)
        if manifest["cryptotensors"] is None:
            cases = [c for c in cases if not c.startswith("cryptotensors")]
        warm_page_cache(directory)
        info = machine()
        results: dict[str, list[dict]] = {c: [] for c in cases}
        for round_number in range(args.runs):
            for case in cases:
                record = run_worker(directory, case)
                results[case].append(record)
                print(f"round {round_number + 1}/{args.runs} {case}: {record['seconds']:.3f} s",
                      file=sys.stderr, flush=True)
        rss: dict[str, list[int]] = {}
        for _ in range(args.rss_runs):
            for case in RSS_CASES:
                if case in cases:
                    rss.setdefault(case, []).append(run_worker(directory, case, "--rss")["rss_delta"])
        with open("/proc/loadavg") as f:
            info["loadavg_at_end"] = f.read().split()[:3]
        info["uptime_at_end"] = uptime()
        summary = summarize(results)
        model_bytes = manifest["model"]["nbytes"]
        timings, targets, _ = tables(summary, rss, model_bytes)
        command = "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
        chart = Path(args.chart) if args.chart else (
            Path(args.markdown).with_suffix(".png") if args.markdown else Path("spread.png"))
        note = draw_chart(summary, chart, f"{info.get('cpu', '?')}, {info['cpus']} CPUs; "
                                          f"{info['uptime_at_start']}")
        text = (f"Model: {len(manifest['model']['tensors'])} tensors, {model_bytes} bytes "
                f"({model_bytes / (1 << 30):.3f} GiB); {args.runs} fresh processes per case, "
                f"interleaved round by round, medians.\n\nMachine: {json.dumps(info)}\n\n"
                f"Command: `{command.strip()}`\n\n{timings}\n\n{targets}\n\n"
                f"Spread (wall over fresh processes; CPU, system time and faults are medians):\n\n"
                f"{spread_table(summary)}\n\n{fresh_targets(summary)}\n\n{note}\n")
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": info, "results": results,
                                                   "rss": rss, "summary": summary}, indent=1))
    finally:
        if temporary and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
