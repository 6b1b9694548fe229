"""`python -m benchmarks encoder`: runtime x input size, side by side in one run.

For each input size and runtime: the bare forward on ready uint8 batches (batch 1 latency, batch 32
throughput), measured in alternating rounds so that the machine's drift hits every row alike; then
extraction of real catalog JPEGs (decode + letterbox + forward) on the `auto` runtime against its own
bare forward at the same batch size.
"""

from __future__ import annotations

import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imageretrieval.catalog import load_catalog
from imageretrieval.extract import extract_features
from imageretrieval.inference import create_encoder, resolve_runtime, runtime_installed
from imageretrieval.models import create_model, get_model_config
from imageretrieval.models.registry import sized_name
from imageretrieval.preprocess import preprocess_for
from imageretrieval.quantize import QuantizationError

from .report import machine_line, write_section

log = logging.getLogger(__name__)

RUNTIME_CHOICES = ("torch", "torch-compiled", "onnxruntime", "openvino")
INT8 = "onnxruntime-int8"  # the model's accepted int8 twin (`imageretrieval quantize`); opt-in


def register(sub) -> None:
    p = sub.add_parser("encoder", help="bare forward per runtime and input size, and extraction throughput")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="a model of the zoo; --sizes re-sizes a pretrained one (name@WxH)")
    p.add_argument("--sizes", default="", help="comma-separated WxH input sizes, e.g. 224x224,120x160,96x128 "
                                               "(default: the model's own)")
    p.add_argument("--runtimes", default=",".join(RUNTIME_CHOICES), help="comma-separated, of " +
                   ", ".join((*RUNTIME_CHOICES, INT8)) + f" ({INT8}: the model's int8 twin, made by "
                   "`imageretrieval quantize` in WORKDIR)")
    p.add_argument("--batch", type=int, default=32, help="the throughput batch size")
    p.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds (median reported)")
    p.add_argument("--images", type=int, default=2048, help="catalog images for the extraction figure (0 = skip)")
    p.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    p.set_defaults(func=run)


def _sizes(model: str, sizes: str) -> list[str]:
    if not sizes:
        return [model]
    names = []
    for item in sizes.split(","):
        w, _, h = item.strip().partition("x")
        if not (w.isdigit() and h.isdigit()):
            raise ValueError(f"--sizes {item!r}: expected WxH, e.g. 96x128")
        names.append(sized_name(model, int(w), int(h)))
    return names


def latency_ms(encoder, x: np.ndarray, calls: int) -> float:
    """Median milliseconds of `calls` forwards of `x`."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        encoder(x)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def throughput(encoder, x: np.ndarray, batches: int) -> float:
    """Images per second over `batches` forwards of the batch `x`."""
    t0 = time.perf_counter()
    for _ in range(batches):
        encoder(x)
    return len(x) * batches / (time.perf_counter() - t0)


def run(args, settings) -> int:
    from imageretrieval.cli import CLIError

    try:
        names = _sizes(args.model, args.sizes)
        configs = [get_model_config(n, settings.workdir) for n in names]
    except (ValueError, KeyError) as exc:
        raise CLIError(str(exc)) from exc
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = [r for r in runtimes if r not in (*RUNTIME_CHOICES, INT8)]
    if unknown:
        raise CLIError(f"--runtimes: unknown {unknown}; choose from {', '.join((*RUNTIME_CHOICES, INT8))}")
    runtimes = [r for r in runtimes if runtime_installed(r.removesuffix("-compiled").removesuffix("-int8"))]
    cpu = torch.device("cpu")
    rng = np.random.default_rng(0)
    encoders, inputs = {}, {}
    with tempfile.TemporaryDirectory() as export_root:
        for config in configs:
            shape = preprocess_for(config).shape
            model = create_model(config.name, workdir=settings.workdir)
            inputs[config.name] = rng.integers(0, 256, (args.batch, *shape), dtype=np.uint8)
            for rt in runtimes:
                if rt == INT8:  # the twin lives beside the model's export in the workdir
                    try:
                        encoders[config.name, rt] = create_encoder(model, shape, "onnxruntime", cpu, "int8",
                                                                   settings.workdir)
                    except QuantizationError as exc:
                        raise CLIError(str(exc)) from exc
                else:
                    encoders[config.name, rt] = create_encoder(
                        model, shape, rt.removesuffix("-compiled"), cpu, "fp32", Path(export_root),
                        compile=rt.endswith("-compiled"))
                encoders[config.name, rt](inputs[config.name][:1])  # warm-up: kernel choice, allocations
        results: dict[tuple[str, str], dict[str, list[float]]] = {k: {"b1": [], "bn": []} for k in encoders}
        for r in range(args.rounds):  # alternate: every configuration once per round
            log.info("round %d of %d", r + 1, args.rounds)
            for key, encoder in encoders.items():
                x = inputs[key[0]]
                results[key]["b1"].append(latency_ms(encoder, x[:1], 20))
                results[key]["bn"].append(throughput(encoder, x, max(2, 256 // args.batch)))
        rows = []
        for (name, rt), res in results.items():
            h, w = get_model_config(name, settings.workdir).input_hw
            rows.append(f"| {rt} | {w}x{h} | {np.median(res['b1']):.1f} ms | {np.median(res['bn']):.0f} img/s |")

        extraction = []
        if args.images:
            catalog = load_catalog(settings.dataset_root)
            ids = np.sort(rng.choice(catalog.ids, size=min(args.images, len(catalog)), replace=False))
            paths = [catalog.image_path(i) for i in ids]
            auto = resolve_runtime(settings.runtime, cpu, "fp32")
            for config in configs:
                model = create_model(config.name, workdir=settings.workdir)
                encoder = encoders.get((config.name, auto)) or create_encoder(
                    model, preprocess_for(config).shape, auto, cpu, "fp32", Path(export_root))
                bare_before = throughput(encoder, inputs[config.name], max(2, len(ids) // args.batch // 4))
                with tempfile.TemporaryDirectory() as out:
                    t0 = time.perf_counter()
                    extract_features(model, paths, ids, Path(out), batch_size=args.batch,
                                     num_workers=settings.num_workers, device="cpu", precision="fp32",
                                     progress=False, runtime=auto, workdir=Path(export_root))
                    rate = len(ids) / (time.perf_counter() - t0)
                bare_after = throughput(encoder, inputs[config.name], max(2, len(ids) // args.batch // 4))
                bare = (bare_before + bare_after) / 2
                h, w = config.input_hw
                extraction.append(f"| {auto} | {w}x{h} | {len(ids)} | {rate:.0f} img/s | {bare:.0f} img/s | "
                                  f"{rate / bare:.2f}x |")

    cmd = "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    body = [f"## Encoder: {args.model}, runtime x input size", "", f"Machine: {machine_line()}.", "",
            f"Command: `DATASET_ROOT=... {cmd}` ({args.rounds} alternating rounds, medians; fp32 but "
            f"{INT8})", "",
            f"| runtime | input (WxH) | batch 1 latency | batch {args.batch} throughput |", "|---|---|---|---|", *rows]
    if extraction:
        body += ["", f"Extraction of catalog JPEGs (decode + letterbox + forward, batch {args.batch}, "
                     f"{settings.num_workers} loader worker(s)) against the bare forward measured just before "
                     "and after it:", "",
                 "| runtime | input (WxH) | images | extraction | bare forward | ratio |", "|---|---|---|---|---|---|",
                 *extraction]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        write_section(f"encoder-{args.model}", text)
    return 0
