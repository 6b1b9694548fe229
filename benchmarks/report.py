"""Writing a benchmark's section into docs/benchmarks.md without touching the other sections."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

from imageretrieval.io_utils import atomic_write

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"  # the checkout's
HEADER = "# Benchmarks\n\nEvery figure below was measured by the command shown with it, on the machine described.\n"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def write_section(name: str, body: str, doc: Path = DOC) -> Path:
    """Replace (or append) the section between `<!-- bench:name -->` markers."""
    doc = Path(doc)
    text = doc.read_text() if doc.is_file() else HEADER
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write(doc, lambda p: p.write_text(text))
    return doc
