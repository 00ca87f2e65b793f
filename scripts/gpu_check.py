#!/usr/bin/env python3
"""End-to-end GPU check: sealtensors to CUDA vs pinned host-to-device bandwidth and plain safetensors.

Run on a machine with an NVIDIA GPU, torch with CUDA, and sealtensors installed (see docs/GPU.md for
getting its dependencies there without network access):

    python scripts/gpu_check.py [--gib 4] [--repeats 3] [--out results.json]

It builds a synthetic model of --gib GiB, saves it plain and sealed, checks that GPU results equal
CPU results bit for bit, measures (median of --repeats) pinned host-to-device bandwidth, plain
``safetensors.torch.load_file(device="cuda")`` and ``sealtensors.torch.load_file(device="cuda")``,
prints the ratios and exits non-zero when a result differs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def _median_seconds(function, repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del result
        torch.cuda.empty_cache()
    return statistics.median(times)


def _model(total_bytes: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors, used, layer = {}, 0, 0
    kinds = [(torch.bfloat16, 4096 * 4096), (torch.float16, 4096 * 2048), (torch.float32, 4096 * 2048)]
    while used < total_bytes:
        dtype, numel = kinds[layer % len(kinds)]
        values = torch.randint(-(2 ** 15), 2 ** 15 - 1, (numel,), generator=generator,
                               dtype=torch.int16 if dtype != torch.float32 else torch.int32)
        tensors[f"layers.{layer}.weight"] = values.view(dtype).reshape(4096, -1)
        tensors[f"layers.{layer}.norm"] = torch.ones(4096, dtype=dtype)
        used += tensors[f"layers.{layer}.weight"].numel() * tensors[f"layers.{layer}.weight"].element_size()
        layer += 1
    return tensors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--slot-mib", type=int, default=16)
    parser.add_argument("--out", default=None)
    parser.add_argument("--dir", default=None, help="where to write the model files")
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import load_file as plain_load, save_file as plain_save

    import sealtensors
    import sealtensors.torch as stt

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    device = "cuda:0"
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "engine": sealtensors.engine_info(), "gib": args.gib}
    print(json.dumps(results), flush=True)

    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        tensors = _model(int(args.gib * (1 << 30)))
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        plain_path = os.path.join(workdir, "model.safetensors")
        sealed_path = os.path.join(workdir, "model.sealed")
        key = sealtensors.generate_key()
        plain_save(tensors, plain_path)
        start = time.perf_counter()
        stt.save_file(tensors, sealed_path, key)
        results["seal_seconds"] = time.perf_counter() - start
        del tensors

        # Warm the page cache for both files so every loader starts hot.
        for path in (plain_path, sealed_path):
            with open(path, "rb") as handle:
                while handle.read(64 << 20):
                    pass

        cpu = stt.load_file(sealed_path, key)
        gpu = stt.load_file(sealed_path, key, device=device, staging_slots=args.slots,
                            staging_bytes=args.slot_mib << 20)
        mismatches = [name for name in cpu
                      if not torch.equal(cpu[name].reshape(-1).view(torch.uint8),
                                         gpu[name].cpu().reshape(-1).view(torch.uint8))]
        plain_gpu = plain_load(plain_path, device=device)
        mismatches += [name for name in cpu
                       if not torch.equal(plain_gpu[name].cpu().reshape(-1).view(torch.uint8),
                                          cpu[name].reshape(-1).view(torch.uint8))]
        results["bit_identical"] = not mismatches
        del cpu, gpu, plain_gpu

        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        pinned.fill_(1)
        target = torch.empty(nbytes, dtype=torch.uint8, device=device)
        h2d = _median_seconds(lambda: target.copy_(pinned, non_blocking=True), args.repeats)
        del target, pinned
        plain = _median_seconds(lambda: plain_load(plain_path, device=device), args.repeats)
        sealed = _median_seconds(lambda: stt.load_file(sealed_path, key, device=device,
                                                       staging_slots=args.slots,
                                                       staging_bytes=args.slot_mib << 20),
                                 args.repeats)
        results.update({
            "model_bytes": nbytes,
            "pinned_h2d_gbps": nbytes / h2d / 1e9,
            "safetensors_cuda_gbps": nbytes / plain / 1e9,
            "sealtensors_cuda_gbps": nbytes / sealed / 1e9,
            "sealtensors_vs_h2d": h2d / sealed,
            "sealtensors_vs_safetensors": plain / sealed,
            "targets": {"vs_h2d_at_least_0.8": h2d / sealed >= 0.8,
                        "faster_than_safetensors_cuda": sealed < plain},
        })
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0 if results["bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
