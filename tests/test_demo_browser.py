"""End to end: the real demo server in a thread, driven by headless Chromium through selenium.

Loads the page, picks a class, steps to the end with the page's buttons and checks what the three panes
show against the API. Saves screenshots into the test's output folder, and to docs/img/demo.png when
JITKIT_UPDATE_DOCS=1. The model is a tiny random JiT, or the run named by JITKIT_DEMO_RUN (a trained shapes
run makes the documentation screenshot; JITKIT_DEMO_EMA and JITKIT_DEMO_CFG pick its weights and CFG scale).

Skipped, with the reason shown, when chromium, chromedriver or selenium is missing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flask")

from jitkit.config import SamplerConfig  # noqa: E402
from jitkit.demo.server import create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red_circle", "green_square", "blue_triangle", "yellow_cross"]
STEPS = 12  # <= 1/t_eps = 20: the last x-prediction equals the final image exactly


def _find(names: list[str], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for n in names:
        p = shutil.which(n) or (n if os.path.isabs(n) and os.access(n, os.X_OK) else None)
        if p:
            return p
    return None


def _model(tiny):
    run = os.environ.get("JITKIT_DEMO_RUN")
    if not run:
        cfg = tiny.model_config(img_size=16, num_classes=len(CLASSES))
        return tiny.denoiser(cfg), cfg, CLASSES, SamplerConfig(steps=STEPS), "tiny random JiT (test model)"
    from jitkit.checkpoint import load_denoiser

    den, rc, classes = load_denoiser(run, ema=os.environ.get("JITKIT_DEMO_EMA", "1"), device="cpu")
    cfg_scale = float(os.environ.get("JITKIT_DEMO_CFG", rc.sampler.cfg))
    sampler = rc.sampler.replace(steps=STEPS, cfg=cfg_scale)
    return den, rc.model, classes, sampler, f"trained {rc.model.name} shapes run"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 sampling of a small model on a shared machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def browser_paths():
    chromium = _find(
        ["/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"], "JITKIT_CHROMIUM"
    )
    driver = _find(["/usr/bin/chromedriver", "chromedriver"], "JITKIT_CHROMEDRIVER")
    if chromium is None or driver is None:
        pytest.skip(
            f"headless browser test skipped: chromium={chromium!r}, chromedriver={driver!r} not found "
            "(install the Debian packages chromium and chromium-driver)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("headless browser test skipped: the python package selenium is not installed (extra dev)")
    return chromium, driver


@pytest.fixture(scope="module")
def server(tiny):
    from werkzeug.serving import make_server

    den, cfg, classes, sampler, label = _model(tiny)
    app = create_app(den, cfg, classes, sampler=sampler, source=label)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_port}", classes
    srv.shutdown()
    th.join(timeout=10)


@pytest.fixture()
def driver(browser_paths, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_paths
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never download a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--window-size=1060,1040",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        drv = webdriver.Chrome(service=Service(chromedriver), options=opts)
    except Exception as e:  # a browser that cannot start is an environment problem, said out loud
        pytest.skip(f"headless browser test skipped: chromium did not start ({type(e).__name__}: {e})")
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _wait(drv, cond: str, timeout: float = 60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = drv.execute_script(f"return {cond};")
        if v:
            return v
        time.sleep(0.1)
    state = drv.execute_script(
        "return document.body.dataset.state + ' / ' + document.getElementById('status').textContent;"
    )
    raise AssertionError(f"timed out waiting for {cond!r}; page state: {state}")


def _decode(b64: str, S: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(S, S, 3)


def test_page_steps_through_a_run(server, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, classes = server
    driver.get(url + "/")
    _wait(driver, "window.jitkitDemo && window.jitkitDemo.state === 'ready'")
    assert driver.execute_script("return window.jitkitDemo.steps;") == STEPS

    # pick a class: the page samples it
    pick = classes[2]
    Select(driver.find_element(By.ID, "class-select")).select_by_value(pick)
    _wait(
        driver, f"window.jitkitDemo.state === 'ready' && window.jitkitDemo.run.class === {json.dumps(pick)}"
    )
    run = driver.execute_script("return window.jitkitDemo.run;")
    S = run["width"]

    panes = ("z-canvas", "grid-canvas", "x-canvas")
    driver.find_element(By.ID, "first-btn").click()
    assert driver.execute_script("return window.jitkitDemo.frame;") == 0
    assert driver.execute_script("return window.jitkitDemo.playing;") is False
    start = {p: driver.execute_script("return window.jitkitDemo.paneHash(arguments[0]);", p) for p in panes}
    z_start = _decode(driver.execute_script("return window.jitkitDemo.paneNative('z-canvas');"), S)
    assert np.array_equal(z_start, _decode(run["z"][0], S))  # the page shows the run's noise

    # step to the end with the "next" button
    nxt = driver.find_element(By.ID, "next-btn")
    for k in range(1, STEPS + 1):
        nxt.click()
        assert driver.execute_script("return window.jitkitDemo.frame;") == k
    nxt.click()  # past the end stays at the end
    assert driver.execute_script("return window.jitkitDemo.frame;") == STEPS
    end = {p: driver.execute_script("return window.jitkitDemo.paneHash(arguments[0]);", p) for p in panes}
    for p in panes:
        assert end[p] != start[p], f"pane {p} did not change between the first and the last step"

    # the last x-prediction equals the final image, on screen and in the API's own answer
    shown_z = _decode(driver.execute_script("return window.jitkitDemo.paneNative('z-canvas');"), S)
    shown_x = _decode(driver.execute_script("return window.jitkitDemo.paneNative('x-canvas');"), S)
    q = json.dumps(
        {"class": pick, "seed": run["seed"], "steps": STEPS, "sampler": run["sampler"], "cfg": run["cfg"]}
    )
    req = urllib.request.Request(
        url + "/api/sample", data=q.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        api = json.loads(resp.read())
    final = _decode(api["final"], S)
    assert np.array_equal(shown_z, final), "the last frame does not show the final image"
    assert np.array_equal(shown_x, _decode(api["x"][-1], S))
    assert np.array_equal(shown_x, final), "the last x-prediction differs from the final image"
    assert "= final image" in driver.find_element(By.ID, "x-caption").text
    assert driver.execute_script("return window.jitkitDemo.paneHash('z-canvas');") == driver.execute_script(
        "return window.jitkitDemo.paneHash('x-canvas');"
    )

    # nothing went wrong in the page (script errors, blocked resources, CSP violations)
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe

    # fit the window to the whole page for the screenshots
    height = driver.execute_script(
        "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight;"
    )
    driver.set_window_size(1060, int(height) + 4)
    driver.save_screenshot(str(tmp_path / "demo-final.png"))
    # the middle frame shows the noisy state and the clean guess side by side
    driver.execute_script(
        "window.jitkitDemo.setFrame(arguments[0]); document.activeElement.blur();", STEPS // 2
    )
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()  # no hover
    shot = tmp_path / "demo.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("JITKIT_UPDATE_DOCS") == "1":
        dest = REPO / "docs" / "img" / "demo.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)


def test_page_shows_a_bad_parameter_as_a_message(server, driver):
    from selenium.webdriver.common.by import By

    url, _ = server
    driver.get(url + "/")
    _wait(driver, "window.jitkitDemo && window.jitkitDemo.state === 'ready'")
    before = driver.execute_script("return window.jitkitDemo.run.final;")
    cfg = driver.find_element(By.ID, "cfg-input")
    cfg.clear()
    cfg.send_keys("-1")
    driver.find_element(By.ID, "sample-btn").click()
    _wait(driver, "window.jitkitDemo.state === 'error'")
    status = driver.find_element(By.ID, "status")
    assert "cfg must lie in" in status.text and "error" in status.get_attribute("class")
    assert driver.execute_script("return window.jitkitDemo.run.final;") == before  # the last run stays


@pytest.fixture(scope="module")
def data_server(tiny):
    from werkzeug.serving import make_server

    cfg = tiny.model_config(img_size=16, num_classes=len(CLASSES))
    images = np.random.default_rng(0).integers(0, 256, size=(2, 3, 16, 16), dtype=np.uint8)
    app = create_app(
        tiny.denoiser(cfg), cfg, CLASSES, sampler=SamplerConfig(steps=4), data_images=(images, [3, 1])
    )
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_port}", images
    srv.shutdown()
    th.join(timeout=10)


def test_page_starts_from_a_data_image(data_server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, images = data_server
    driver.get(url + "/")
    _wait(driver, "window.jitkitDemo && window.jitkitDemo.state === 'ready'")
    assert driver.find_element(By.ID, "start-field").is_displayed()
    assert not driver.find_element(By.ID, "source-canvas").is_displayed()  # a run from the seed
    Select(driver.find_element(By.ID, "start-select")).select_by_value("1")
    _wait(driver, "window.jitkitDemo.state === 'ready' && window.jitkitDemo.run.image === 1")
    run = driver.execute_script("return window.jitkitDemo.run;")
    # the page switched the class to the image's own (a reconstruction) and shows the image
    assert run["class"] == CLASSES[1] and run["source_class"] == CLASSES[1]
    assert driver.find_element(By.ID, "source-canvas").is_displayed()
    assert np.array_equal(_decode(run["source"], 16), images[1].transpose(1, 2, 0))
    status = driver.find_element(By.ID, "status").text
    assert "from data image 1" in status and "reconstruction RMS" in status
    # another class from the same image: the same inverted start
    Select(driver.find_element(By.ID, "class-select")).select_by_value(CLASSES[0])
    _wait(
        driver,
        f"window.jitkitDemo.state === 'ready' && window.jitkitDemo.run.class === {json.dumps(CLASSES[0])}",
    )
    other = driver.execute_script("return window.jitkitDemo.run;")
    assert (
        other["image"] == 1
        and other["z"][0] == run["z"][0]
        and "reconstruction" not in driver.find_element(By.ID, "status").text
    )
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
