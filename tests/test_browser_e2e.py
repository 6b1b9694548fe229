"""Real-browser end-to-end test: headless Chromium -> nginx (retrieval-app/nginx.conf) -> the API.

The API (uvicorn, a subprocess) serves the tiny test models over the synthetic catalog of
conftest; nginx serves the built app (retrieval-app/dist) and proxies /api. Skipped with a reason
when nginx, Chromium or the built app is missing, unless REQUIRE_BROWSER_TEST=1 (CI), which fails.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "retrieval-app" / "dist"
sys.path.insert(0, str(REPO / "scripts"))
import nginx_conf  # noqa: E402

MAX_UPLOAD_MB = 1  # small, so that "file too large" is cheap to provoke
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def unavailable(reason: str) -> None:
    if os.environ.get("REQUIRE_BROWSER_TEST") == "1":
        pytest.fail(f"REQUIRE_BROWSER_TEST=1 but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, synthetic_catalog, built_workdir) -> Iterator[str]:
    nginx = nginx_conf.find_nginx()
    if nginx is None:
        unavailable("nginx is not installed (apt-get install nginx, or run scripts/test-deps.sh)")
    if not (DIST / "index.html").is_file():
        unavailable("the web app is not built (make app)")
    tmp = tmp_path_factory.mktemp("e2e")
    workdir = tmp / "wd"  # a copy with a text projection for `tiny`: the search box searches for real
    shutil.copytree(built_workdir, workdir)
    from imageretrieval.training.text import train_text_projection

    from .conftest import make_settings

    train_text_projection(make_settings(synthetic_catalog, workdir), "tiny", "hashing-64", epochs=3, hidden=32,
                          batch=32, progress=False)
    api_port, web_port = free_port(), free_port()
    env = {**os.environ, "WORKDIR": str(workdir), "DATASET_ROOT": str(synthetic_catalog),
           "DEFAULT_MODEL": "tiny", "MODELS": "tiny,tiny2", "DEVICE": "cpu", "PRECISION": "fp32",
           "MAX_UPLOAD_MB": str(MAX_UPLOAD_MB), "APP_DIST": str(tmp / "no-app"), "HF_HUB_OFFLINE": "1"}
    api_log = tmp / "api.log"
    with open(api_log, "w") as fh:
        api = subprocess.Popen([sys.executable, "-m", "uvicorn", "retrievalapi.main:app", "--host", "127.0.0.1",
                                "--port", str(api_port)], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    nginx_proc = None
    try:
        wait_for(f"http://127.0.0.1:{api_port}/api/ready", api, api_log)
        prefix = tmp / "nginx"
        conf = nginx_conf.write_config(prefix, f"127.0.0.1:{web_port}", f"127.0.0.1:{api_port}", DIST, MAX_UPLOAD_MB)
        nginx_log = prefix / "error.log"
        nginx_log.touch()
        nginx_proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(f"http://127.0.0.1:{web_port}/", nginx_proc, nginx_log, timeout=20)
        yield f"http://127.0.0.1:{web_port}"
    finally:
        if nginx_proc is not None:
            stop(nginx_proc)
        stop(api)


@pytest.fixture(scope="module")
def browser(app_url):
    executable = next((p for p in CHROMIUM_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("chromium")
    if executable is None:
        unavailable("Chromium is not installed (apt-get install chromium, or run scripts/test-deps.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -r requirements-dev.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture()
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    pg.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    pg.goto(app_url + "/")
    pg.locator("#model-select option[value='tiny']").wait_for(state="attached")
    yield pg
    context.close()
    assert not problems, problems


# ----- helpers ----------------------------------------------------------------------------------
def cards(pg):
    return pg.locator("#grid li.card:not(.skeleton)")


def wait_results(pg, n: int) -> None:
    pg.wait_for_function(
        "n => document.querySelectorAll('#grid li.card:not(.skeleton)').length === n "
        "&& document.querySelector('#results').getAttribute('aria-busy') === 'false'", arg=n)


def assert_images_loaded(pg) -> None:
    items = cards(pg)
    for i in range(items.count()):
        img = items.nth(i).locator("img")
        img.scroll_into_view_if_needed()
        img.evaluate("im => im.complete && im.naturalWidth > 0 ? true : "
                     "new Promise((ok, ko) => { im.onload = () => ok(true); im.onerror = () => ko(im.src) })")
        assert img.evaluate("im => im.naturalWidth") > 0
        assert img.get_attribute("alt")


def result_ids(pg) -> list[int]:
    return [int(v) for v in cards(pg).evaluate_all("els => els.map(e => e.dataset.id)")]


def last_upload(pg) -> str:
    return pg.evaluate("window.__uploads[window.__uploads.length - 1]")


def query(pg) -> dict[str, list[str]]:
    return parse_qs(urlparse(pg.url).query)


# ----- tests --------------------------------------------------------------------------------------
def test_nginx_serves_app_with_headers_gzip_and_spa_fallback(app_url, synthetic_catalog):
    with urllib.request.urlopen(app_url + "/") as resp:
        html = resp.read().decode()
        assert "Lookalike" in html
        assert resp.headers["Server"].startswith("nginx")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["Cache-Control"] == "no-cache"
    asset = next((DIST / "assets").glob("*.js")).name
    req = urllib.request.Request(f"{app_url}/assets/{asset}", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert "immutable" in resp.headers["Cache-Control"]
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert gzip.decompress(resp.read()) == (DIST / "assets" / asset).read_bytes()
    with urllib.request.urlopen(app_url + "/some/shared/link?model=tiny") as resp:  # SPA fallback
        assert "Lookalike" in resp.read().decode()
    with urllib.request.urlopen(f"{app_url}/api/images/1001?v=0") as resp:  # the URL a result carries
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert "max-age=2592000" in resp.headers["Cache-Control"]
        assert resp.read() == (synthetic_catalog / "images" / "1001.jpg").read_bytes()
    # over client_max_body_size: nginx itself answers, in the API's JSON error format
    body = b"x" * ((MAX_UPLOAD_MB + 2) * 1024 * 1024)
    req = urllib.request.Request(f"{app_url}/api/search", data=body, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 413
    assert "too large" in err.value.read().decode()
    # a bulk load of the live catalog has the API's larger limit: this one reaches the API, which wants a key
    req = urllib.request.Request(f"{app_url}/api/products/batch", data=body, method="POST",
                                 headers={"Content-Type": "multipart/form-data; boundary=x"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 401 and "key" in err.value.read().decode().lower()


def test_upload_then_change_k_model_and_filter(page, synthetic_catalog):
    pg = page
    assert pg.locator("#synthetic-banner").is_visible()
    assert pg.locator("#model-select").input_value() == "tiny"
    with pg.expect_response(lambda r: r.url.endswith("/api/search")) as first_search:
        pg.set_input_files("#file-input", str(synthetic_catalog / "images" / "1001.jpg"))
    assert first_search.value.json()["rerank"] == "category"  # "same type first" by default
    # "same gender first" is on by default too, but this model has no gender predictor: off, and says why
    assert pg.locator("#same-gender").is_disabled() and not pg.locator("#same-gender").is_checked()
    assert "no gender predictor" in pg.locator("#same-gender-help").inner_text()
    assert "by look only" not in pg.locator("#options-state").text_content()
    wait_results(pg, 15)
    assert_images_loaded(pg)
    assert result_ids(pg)[0] == 1001  # a catalog image finds itself first
    first = cards(pg).first
    assert first.locator(".rank").inner_text() == "#1"
    assert "Tshirts" in first.locator(".meta").inner_text()
    assert "Similarity" in first.locator(".score").inner_text()
    assert "15 results" in pg.locator("#status").inner_text()
    assert pg.locator("#status").inner_text().endswith(f"· {first_search.value.json()['type_first']} first")

    # unticking "same type first" asks the API for the purely visual order
    assert pg.locator("#same-type").is_checked() and "order" not in query(pg)
    with pg.expect_response(lambda r: r.url.endswith("/api/search")) as visual:
        pg.uncheck("#same-type")
    assert visual.value.json()["rerank"] == "none"
    pg.wait_for_function("() => !document.querySelector('#status').textContent.includes(' first')")
    wait_results(pg, 15)
    assert query(pg)["order"] == ["gender"]  # the gender order stays asked for, for a model that can give it
    assert "by look only" in pg.locator("#options-state").text_content()  # ... but this one searched by look

    pg.select_option("#topk-select", "5")
    wait_results(pg, 5)
    assert query(pg)["k"] == ["5"]

    pg.select_option("#model-select", "tiny2")
    pg.wait_for_function("() => document.querySelector('#status').textContent.includes('tiny2')")
    wait_results(pg, 5)
    assert query(pg)["model"] == ["tiny2"]
    assert_images_loaded(pg)

    pg.select_option("#filter-gender", "Women")
    pg.wait_for_function("() => location.search.includes('gender=Women')")
    wait_results(pg, 5)
    metas = cards(pg).locator(".meta").all_inner_texts()
    assert metas and all(m.endswith("Women") for m in metas), metas
    pg.select_option("#filter-articleType", "Watches")
    wait_results(pg, 5)
    assert all("Watches" in m and "Women" in m for m in cards(pg).locator(".meta").all_inner_texts())
    assert query(pg) == {"model": ["tiny2"], "k": ["5"], "gender": ["Women"], "articleType": ["Watches"],
                         "order": ["gender"]}

    # a reload keeps model, K and filters (and the photo, from the session) and searches again
    before = result_ids(pg)
    pg.reload()
    wait_results(pg, 5)
    assert pg.locator("#model-select").input_value() == "tiny2"
    assert pg.locator("#topk-select").input_value() == "5"
    assert pg.locator("#filter-gender").input_value() == "Women"
    assert not pg.locator("#same-type").is_checked()
    assert result_ids(pg) == before

    pg.click("#clear-filters")
    wait_results(pg, 5)
    assert "gender" not in query(pg)


def test_search_box_words_alone_then_refining_a_photo(page, synthetic_catalog):
    page.fill("#words-input", "women pink tshirts")
    page.press("#words-input", "Enter")
    expect_cards = cards(page)
    expect_cards.first.wait_for()
    assert expect_cards.count() == 15
    assert parse_qs(urlparse(page.url).query)["q"] == ["women pink tshirts"]
    page.fill("#words-input", "")  # emptied: back to the start, nothing searched
    page.press("#words-input", "Enter")
    assert "q" not in parse_qs(urlparse(page.url).query)
    page.set_input_files("#file-input", str(synthetic_catalog / "images" / "1002.jpg"))
    cards(page).first.wait_for()
    with page.expect_response(lambda r: r.url.endswith("/api/search") and r.request.method == "POST") as answer:
        page.fill("#words-input", "in red")
        page.press("#words-input", "Enter")
    # the photo went with the words: the answer is the photo + words ranking (plain, no type vote)
    assert answer.value.status == 200 and answer.value.json()["rerank"] == "none"
    assert parse_qs(urlparse(page.url).query)["q"] == ["in red"]
    page.go_back()  # the previous words come back with the URL
    assert page.input_value("#words-input") == ""
    page.fill("#words-input", "women pink tshirts")
    page.press("#words-input", "Enter")
    with page.expect_response(lambda r: r.url.endswith("/api/search/text")) as words_alone:
        page.click("#remove-photo")  # the photo goes: the words search alone
    assert words_alone.value.status == 200
    assert page.locator("#preview").is_hidden() and page.locator("#pick-button").is_visible()
    wait_results(page, 15)
    page.reload()  # a removed photo does not come back
    wait_results(page, 15)
    assert page.locator("#preview").is_hidden()
    page.fill("#words-input", "x" * 300)  # the box caps what can be typed
    assert len(page.input_value("#words-input")) == 200


def test_more_like_this_and_back(page, synthetic_catalog):
    pg = page
    pg.set_input_files("#file-input", str(synthetic_catalog / "images" / "1030.jpg"))
    wait_results(pg, 15)
    second = cards(pg).nth(1)
    target = int(second.get_attribute("data-id"))
    name = second.locator(".name").inner_text()
    second.get_by_role("button", name="More like this").click()
    pg.wait_for_function(f"() => location.search.includes('like={target}')")
    wait_results(pg, 15)
    assert target not in result_ids(pg)  # the product itself is left out
    assert pg.locator("#like-panel").is_visible()
    assert pg.locator("#like-name").inner_text() == name
    assert pg.locator("#results-title").inner_text() == "More like this"
    assert_images_loaded(pg)
    pg.reload()  # the photo survives a reload of the "more like this" view
    wait_results(pg, 15)
    assert pg.locator("#back-to-photo").inner_text() == "Back to your photo"

    # a shared "more like this" link works in a fresh page
    shared = pg.url
    other = pg.context.new_page()
    other.goto(shared)
    wait_results(other, 15)
    assert result_ids(other) == result_ids(pg)
    assert other.locator("#like-name").inner_text() == name
    other.close()

    pg.go_back()  # browser history returns to the photo's results
    pg.wait_for_function("() => !location.search.includes('like=')")
    wait_results(pg, 15)
    assert result_ids(pg)[0] == 1030
    assert pg.locator("#like-panel").is_hidden()


def test_errors_are_shown_plainly(page, tmp_path, synthetic_catalog):
    pg = page
    pg.set_input_files("#file-input", str(synthetic_catalog / "images" / "1002.jpg"))
    wait_results(pg, 15)
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n" * 20)
    pg.set_input_files("#file-input", str(text))
    alert = pg.get_by_role("alert")
    alert.wait_for(state="visible")
    assert "not a supported image" in alert.inner_text()
    assert cards(pg).count() == 0  # the last photo's results do not stay as if they answered this one
    assert pg.locator("#error-retry").is_hidden()  # trying the same file again would not help

    big = tmp_path / "huge.jpg"  # over the API's limit, under nginx's: the API's own message
    big.write_bytes(b"\xff\xd8\xff" + os.urandom(int(1.5 * 1024 * 1024)))
    pg.click("#error-dismiss")
    pg.set_input_files("#file-input", str(big))
    alert.wait_for(state="visible")
    message = alert.inner_text()
    assert "larger than the 1.0 MB limit" in message, message
    pg.click("#error-dismiss")
    assert alert.is_hidden()


def test_paste_drop_crop_keyboard_and_phone_layout(browser, app_url, synthetic_catalog):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    # Chromium does not show multipart bodies holding a Blob to the test: record the uploads instead.
    context.add_init_script("""
        window.__uploads = [];
        window.__pickers = [];  // file inputs the app opened (a headless file chooser is not reliable)
        const click0 = HTMLInputElement.prototype.click;
        HTMLInputElement.prototype.click = function () {
            if (this.type === 'file') window.__pickers.push(this.id);
            return click0.call(this);
        };
        const fetch0 = window.fetch;
        window.fetch = (input, init) => {
            const image = init && init.body instanceof FormData ? init.body.get('image') : null;
            if (image) window.__uploads.push(image.name);
            return fetch0(input, init);
        };""")
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(app_url + "/?k=10")
    pg.locator("#model-select option[value='tiny']").wait_for(state="attached")
    assert pg.locator("#camera-button").is_visible()  # phones get a camera button
    words = pg.locator("#words-input").bounding_box()  # the search box fits the phone and is easy to tap
    assert words is not None and words["x"] >= 0 and words["x"] + words["width"] <= 390 and words["height"] >= 44
    # the search options fold under a summary of their state on a phone
    assert pg.locator("#topk-select").is_hidden()
    assert pg.locator("#options-state").text_content() == "tiny · 10 results"
    pg.click("#options summary")
    assert pg.locator("#topk-select").is_visible() and pg.locator("#topk-select").input_value() == "10"
    data = list((synthetic_catalog / "images" / "1050.jpg").read_bytes())
    dispatch = """([kind, bytes]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'photo.jpg', {type: 'image/jpeg'}));
        if (kind === 'paste') document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true}));
        else document.querySelector('#dropzone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }"""
    pg.evaluate(dispatch, ["paste", data])
    wait_results(pg, 10)
    assert result_ids(pg)[0] == 1050
    data = list((synthetic_catalog / "images" / "1070.jpg").read_bytes())
    pg.evaluate(dispatch, ["drop", data])
    pg.wait_for_function("() => document.querySelector('#grid li.card')?.dataset.id === '1070'")
    assert_images_loaded(pg)
    # nothing wider than the phone screen
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390

    # draw a crop box: the next search uploads only that region
    surface = pg.locator("#crop-surface")
    surface.scroll_into_view_if_needed()
    box = surface.bounding_box()
    with pg.expect_request(lambda r: r.url.endswith("/api/search") and r.method == "POST"):
        pg.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
        pg.mouse.down()
        pg.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=5)
        pg.mouse.up()
    assert last_upload(pg) == "crop.jpg"
    assert pg.locator("#clear-crop").is_visible()
    wait_results(pg, 10)
    with pg.expect_request(lambda r: r.url.endswith("/api/search")):
        pg.click("#clear-crop")
    assert last_upload(pg) == "photo.jpg"
    wait_results(pg, 10)

    # keyboard: the crop box moves with the arrow keys; the photo picker opens with Enter
    with pg.expect_request(lambda r: r.url.endswith("/api/search")):
        surface.focus()
        pg.keyboard.press("ArrowRight")
    assert last_upload(pg) == "crop.jpg"
    wait_results(pg, 10)
    searches: list[str] = []
    pg.on("request", lambda r: searches.append(r.url) if r.url.endswith("/api/search") else None)
    with pg.expect_request(lambda r: r.url.endswith("/api/search")):
        for _ in range(4):  # steps in a row: one search, once they stop
            pg.keyboard.press("ArrowDown")
    wait_results(pg, 10)
    assert len(searches) == 1
    pg.locator("#change-photo").focus()
    pg.keyboard.press("Enter")
    assert pg.evaluate("window.__pickers") == ["file-input"]
    pg.set_input_files("#file-input", str(synthetic_catalog / "images" / "1001.jpg"))
    pg.wait_for_function("() => document.querySelector('#grid li.card')?.dataset.id === '1001'")
    context.close()
    assert not errors, errors
