#!/usr/bin/env python3
"""Screenshots of the web app (desktop and phone) searching with a photo, through nginx.

Starts `imageretrieval serve` (DATASET_ROOT, WORKDIR, MODELS and DEFAULT_MODEL from the environment) and
nginx with retrieval-app/nginx.conf, then drives Debian's Chromium with Playwright:

    DATASET_ROOT=... WORKDIR=... python scripts/screenshots.py --query photo.jpg --out docs/screenshots

Writes desktop.png, desktop-more-like-this.png, desktop-crop.png (with --crop), phone.png, phone-results.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import nginx_conf  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise SystemExit(f"{url} not ready after {timeout:.0f} s")


def shoot(base: str, query: Path, out: Path, crop: tuple[float, float, float, float] | None) -> None:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        for name, ctx_args in [
            ("desktop", {"viewport": {"width": 1440, "height": 1000}}),
            ("phone", {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                       "has_touch": True}),
        ]:
            ctx = browser.new_context(**ctx_args)
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            page.goto(base + "/")
            page.wait_for_function("() => !document.querySelector('#model-select').disabled")
            page.set_input_files("#file-input", str(query))
            wait_results(page)
            settle(page)
            page.screenshot(path=str(out / f"{name}.png"))
            print(f"wrote {out / f'{name}.png'}")
            if name == "phone":
                page.locator("#results").evaluate("el => el.scrollIntoView()")
                page.wait_for_timeout(300)
                page.screenshot(path=str(out / "phone-results.png"))
                print(f"wrote {out / 'phone-results.png'}")
            if name == "desktop":
                if crop:
                    surface = page.locator("#crop-surface")
                    box = surface.bounding_box()
                    x, y, w, h = crop
                    page.mouse.move(box["x"] + box["width"] * x, box["y"] + box["height"] * y)
                    page.mouse.down()
                    page.mouse.move(box["x"] + box["width"] * (x + w), box["y"] + box["height"] * (y + h), steps=8)
                    page.mouse.up()
                    wait_results(page)
                    settle(page)
                    page.screenshot(path=str(out / "desktop-crop.png"))
                    print(f"wrote {out / 'desktop-crop.png'}")
                page.locator("#grid li.card .more").first.click()
                page.wait_for_function("() => location.search.includes('like=')")
                wait_results(page)
                settle(page)
                page.screenshot(path=str(out / "desktop-more-like-this.png"))
                print(f"wrote {out / 'desktop-more-like-this.png'}")
            ctx.close()
        browser.close()


def wait_results(page) -> None:
    page.wait_for_function("() => document.querySelector('#results').getAttribute('aria-busy') === 'false' "
                           "&& document.querySelectorAll('#grid li.card:not(.skeleton)').length > 0")


def settle(page) -> None:
    """Load every lazy image (scroll through the page), then return to the top."""
    page.evaluate("""async () => {
        for (const img of document.querySelectorAll('#grid img')) {
            img.scrollIntoView();
            if (!img.complete) await new Promise(r => { img.onload = img.onerror = r; });
        }
        window.scrollTo(0, 0);
    }""")
    page.wait_for_timeout(300)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--query", type=Path, required=True, help="the photo to search with")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--crop", help="a crop box to draw, as fractions x,y,w,h (e.g. 0.2,0.25,0.6,0.4)")
    args = ap.parse_args()
    crop = tuple(float(v) for v in args.crop.split(",")) if args.crop else None
    args.out.mkdir(parents=True, exist_ok=True)
    nginx = nginx_conf.find_nginx()
    if nginx is None:
        raise SystemExit("nginx is not installed")
    api_port, web_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        # MODELS / DEFAULT_MODEL from the environment; unset = every built model, the shipped default first.
        api = subprocess.Popen([sys.executable, "-m", "imageretrieval.cli", "serve", "--port", str(api_port)],
                               env=dict(os.environ))
        web = None
        try:
            wait_for(f"http://127.0.0.1:{api_port}/api/ready", api)
            conf = nginx_conf.write_config(Path(tmp), f"127.0.0.1:{web_port}", f"127.0.0.1:{api_port}",
                                           REPO / "retrieval-app" / "dist", 10)
            web = subprocess.Popen([nginx, "-c", str(conf), "-p", tmp, "-e", f"{tmp}/error.log", "-g", "daemon off;"])
            wait_for(f"http://127.0.0.1:{web_port}/", web)
            shoot(f"http://127.0.0.1:{web_port}", args.query.resolve(), args.out, crop)  # type: ignore[arg-type]
        finally:
            for proc in (web, api):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
