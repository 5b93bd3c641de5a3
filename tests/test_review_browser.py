"""The morning review in a real browser (PRODUCT §12): headless Chromium from the system's
packages, driven by Selenium through the system's chromedriver (installed by .ci/run,
never downloaded at test time), on the ledger and files of a real sandbox run.

The walk: every result is shown (each image rendered, each video decoded), one result is
approved and another rejected with a note using the keyboard, a third approved with the
mouse and withdrawn again; a reload shows them kept; `report --by verdict` and
`retry --rejected` agree exactly; a second run generates the rejected result again, saved
beside the first, and the open page picks it up as a new result to review.

Then judging at full size (the lightbox, its zoom and a video's frame steps), compare,
the reviewer's name recorded with each verdict, and a teammate on the shared address.
With BATCHGEN_SCREENSHOTS=DIR, the screenshots of docs/review.md are taken into DIR (docs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import FAST, on_sandbox, write_manifest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags for a machine without a network: no background connections that would hang.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]
SHOTS = os.environ.get("BATCHGEN_SCREENSHOTS")  # a folder (docs): take docs/review.md's pictures
WAIT = 60  # seconds: generous deadlines for a busy machine, never a timed assertion


def _missing() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return "Chromium and chromedriver (Debian: chromium chromium-driver) are not installed"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


if _missing():
    if os.environ.get("CI"):  # CI installs them (.ci/run): missing there is a failure
        raise RuntimeError(_missing())
    pytest.skip(_missing() or "", allow_module_level=True)

# With -n and --dist loadgroup (the README's command), this module's tests run in one
# worker: the finished run they share (a module fixture) is made once, not in each worker.
pytestmark = pytest.mark.xdist_group("review_browser")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def newcomer_env() -> dict[str, str]:
    """No key and no BATCHGEN_* settings: the ledger and out/ in the working directory."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OKAYPIC_", "BATCHGEN_"))}


def batchgen(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        cwd=cwd,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A folder where `batchgen run manifests/quickstart.yaml --sandbox` has finished."""
    folder = tmp_path_factory.mktemp("morning")
    result = batchgen("run", str(ROOT / "manifests" / "quickstart.yaml"), "--sandbox", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


@contextmanager
def serving(folder: Path, *options: str, share: bool = False) -> Iterator[Any]:
    """`batchgen [OPTIONS] review --port 0` in `folder`: its URL, while it serves; with
    `share`, (URL, the shared link) of `review --share --bind 127.0.0.1:0`."""
    extra = ["--share", "--bind", "127.0.0.1:0"] if share else []
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", *options, "review", "--port", "0", *extra],
        cwd=folder,
        env=newcomer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.fullmatch(r"review page: (http://127\.0\.0\.1:\d+/)\n", line)
    try:
        assert match, line
        if not share:
            yield match[1]
        else:
            link = process.stdout.readline()
            shared = re.fullmatch(r"shared review page: (http://\S+/\?token=\S+)\n", link)
            assert shared, link
            yield match[1], shared[1]
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
        assert "Traceback" not in err, err


@pytest.fixture
def review(finished_run) -> Iterator[str]:
    """`batchgen review` serving the finished run's folder: its URL."""
    with serving(finished_run) as url:
        yield url


@pytest.fixture
def browsers() -> Iterator[Callable[[], WebDriver]]:
    """Opens headless Chromium, each with a profile of its own (its own storage and
    cookies: another person's browser); all are closed at the end."""
    opened: list[tuple[WebDriver, str]] = []

    def open_one() -> WebDriver:
        profile = tempfile.mkdtemp(prefix="batchgen-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        opened.append((driver, profile))
        return driver

    try:
        yield open_one
    finally:
        for driver, profile in opened:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(browsers) -> WebDriver:
    return browsers()


def wait(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check, f"waited for {what}")


def load(driver: WebDriver, url: str) -> None:
    driver.get(url)
    wait(driver, "the page's first data", lambda d: d.find_element(By.TAG_NAME, "body")
         .get_attribute("data-ready") == "1")  # fmt: skip


def press(driver: WebDriver, keys: str) -> None:
    ActionChains(driver).send_keys(keys).perform()


def current_key(driver: WebDriver) -> str:
    return driver.execute_script(
        "const c = document.querySelector('article.card.current'); return c && c.dataset.key"
    )


MEDIA_STATE = """
const card = document.querySelector(`article.card[data-key="${arguments[0]}"]`);
const media = card.querySelector('.media img, .media video');
if (!media) return null;
if (media.tagName === 'IMG') return {tag: 'img', ok: media.complete && media.naturalWidth > 0,
  width: media.naturalWidth, local: media.dataset.local, src: media.getAttribute('src')};
return {tag: 'video', ok: media.readyState >= 2 && media.videoWidth > 0 && !media.error,
  width: media.videoWidth, local: media.dataset.local, src: media.getAttribute('src')};
"""


def media_shown(driver: WebDriver, key: str) -> dict[str, Any]:
    """Wait until the card's image is rendered or its video has a decoded frame."""
    return wait(driver, f"{key}'s media", lambda d: (d.execute_script(MEDIA_STATE, key) or {})
                .get("ok") and d.execute_script(MEDIA_STATE, key))  # fmt: skip


def go_to(driver: WebDriver, key: str) -> None:
    """Move the current card to `key` with the keyboard (g, then j)."""
    press(driver, "g")
    for _ in range(40):
        if current_key(driver) == key:
            return
        press(driver, "j")
    raise AssertionError(f"j never reached {key}")


def verdict_of(driver: WebDriver, key: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'article.card[data-key="{key}"]').get_attribute(
        "data-verdict"
    )


def give_name(driver: WebDriver, name: str) -> None:
    """Answer the name box the first verdict opens in a browser."""
    box = driver.find_element(By.ID, "name-text")
    wait(driver, "the name box", lambda d: box.is_displayed())
    box.send_keys(name)
    press(driver, "\n")
    wait(driver, "the name kept", lambda d: d.find_element(By.ID, "name-box")
         .get_attribute("hidden") is not None)  # fmt: skip


def note_of(driver: WebDriver, key: str) -> str:
    card = driver.find_element(By.CSS_SELECTOR, f'article.card[data-key="{key}"]')
    return card.find_element(By.CLASS_NAME, "note").text


def severe_logs(driver: WebDriver, origin: str | None = None) -> list[str]:
    """The browser's errors; with `origin`, leaving out media that failed to load from
    elsewhere (a result shown from the service's URL for the moment before its file is
    saved, whose service may be gone by now: the page marks it, the browser logs it)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE"
        and not (
            origin is not None
            and "Failed to load resource" in e["message"]
            and not e["message"].startswith(origin)
        )
    ]


def test_a_person_reviews_the_morning_results_and_regenerates_the_rejected_one(
    finished_run, review, browser
):
    folder = finished_run
    load(browser, review)
    keys = browser.execute_script(
        "return [...document.querySelectorAll('article.card')].map(c => c.dataset.key)"
    )
    assert sorted(keys) == sorted(
        f"quickstart/{job}"
        for job in ("cat-sleepy", "cat-curious", "cat-grumpy", "lighthouse", "poster", "dance")
    )

    # Every result, walked through with the keyboard: each image rendered, each video decoded.
    press(browser, "g")
    seen = {}
    for step, _ in enumerate(keys):
        key = current_key(browser)
        seen[key] = media_shown(browser, key)
        if step < len(keys) - 1:
            press(browser, "j")
    assert set(seen) == set(keys)
    assert seen["quickstart/poster"]["tag"] == "img"
    assert {state["tag"] for key, state in seen.items() if key != "quickstart/poster"} == {"video"}
    assert all(state["local"] == "1" and state["width"] > 0 for state in seen.values())

    # Approve one with `a` (the first verdict asks the reviewer's name, once); reject
    # another with `r` and a typed note (Enter saves it).
    go_to(browser, "quickstart/cat-curious")
    press(browser, "a")
    give_name(browser, "Ada")
    wait(browser, "the approval", lambda d: verdict_of(d, "quickstart/cat-curious") == "approved")
    go_to(browser, "quickstart/poster")
    press(browser, "r")
    note = browser.find_element(By.ID, "note-text")
    wait(browser, "the note box", lambda d: note.is_displayed())
    note.send_keys("the bicycle should be red")
    press(browser, "\n")
    wait(browser, "the rejection", lambda d: verdict_of(d, "quickstart/poster") == "rejected")
    # With the mouse: approve a third, then withdraw it with `u`.
    grumpy = browser.find_element(By.CSS_SELECTOR, 'article.card[data-key="quickstart/cat-grumpy"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", grumpy)
    grumpy.find_element(By.CLASS_NAME, "approve").click()
    wait(browser, "the click", lambda d: verdict_of(d, "quickstart/cat-grumpy") == "approved")
    go_to(browser, "quickstart/cat-grumpy")
    press(browser, "u")
    wait(
        browser, "the withdrawal", lambda d: verdict_of(d, "quickstart/cat-grumpy") == "unreviewed"
    )

    # A reload shows them kept.
    browser.refresh()
    load(browser, review)
    verdicts = {key: verdict_of(browser, key) for key in keys}
    assert verdicts == {
        key: {"quickstart/cat-curious": "approved", "quickstart/poster": "rejected"}.get(
            key, "unreviewed"
        )
        for key in keys
    }
    assert note_of(browser, "quickstart/poster").endswith("the bicycle should be red")
    summary = browser.find_element(By.ID, "summary").text
    assert "1 approved · 1 rejected · 4 to review" in summary

    # The command line agrees exactly.
    report = batchgen("report", "--by", "verdict", "--format", "json", cwd=folder)
    assert report.returncode == 0, report.stderr
    groups = {g["key"]: g for g in json.loads(report.stdout)["groups"]}
    assert {k: (g["jobs"], g["spent_usd"]) for k, g in groups.items()} == {
        "approved": (1, "0.10"),
        "rejected": (1, "0.20"),
        "unreviewed": (4, "0.62"),
    }
    retry = batchgen("retry", "--rejected", cwd=folder)
    assert retry.returncode == 0 and retry.stdout.startswith("1 job(s) queued"), retry.stderr
    jobs = {j["id"]: j for j in json.loads(batchgen("status", "--json", cwd=folder).stdout)["jobs"]}
    assert {k: j["status"] for k, j in jobs.items() if j["status"] != "completed"} == {
        "poster": "queued"
    }
    assert jobs["cat-curious"]["verdict"] == "approved"
    report = batchgen("report", "--by", "reviewer", "--format", "json", cwd=folder)
    groups = {g["key"]: g["jobs"] for g in json.loads(report.stdout)["groups"]}
    assert groups == {"Ada": 1, "(unreviewed)": 4, "(no result)": 1}  # poster: requeued

    # Generated again while the page is open: saved beside the rejected one, which stays,
    # and the page shows the new result, to review.
    first = (folder / "out" / "quickstart" / "poster.png").read_bytes()
    again = batchgen("run", str(ROOT / "manifests" / "quickstart.yaml"), "--sandbox", cwd=folder)
    assert again.returncode == 0, again.stderr
    second = (folder / "out" / "quickstart" / "poster~2.png").read_bytes()
    assert (folder / "out" / "quickstart" / "poster.png").read_bytes() == first
    assert second.startswith(b"\x89PNG") and second != first
    wait(browser, "the new result", lambda d: verdict_of(d, "quickstart/poster") == "unreviewed")
    wait(browser, "its saved file", lambda d: (d.execute_script(MEDIA_STATE, "quickstart/poster")
         or {}).get("local") == "1")  # fmt: skip
    state = media_shown(browser, "quickstart/poster")
    assert state["tag"] == "img" and state["src"] == "/files/quickstart/poster/0"
    report = batchgen("report", "--jobs", "--format", "json", cwd=folder)
    [poster] = [j for j in json.loads(report.stdout)["jobs"] if j["id"] == "poster"]
    assert [(a["state"], a["cost_usd"], a["verdict"]) for a in poster["attempts"]] == [
        ("completed", "0.20", "rejected"),
        ("completed", "0.20", None),
    ]
    assert severe_logs(browser, origin=review) == []


def test_a_result_not_saved_locally_is_shown_from_the_services_url_then_saved_with_its_marks(
    make_sandbox, browser, tmp_path
):
    # still serving its result URLs, and signing them with a C2PA manifest as a provider
    sandbox = make_sandbox(time_scale=0.01, provenance=True)
    manifest = write_manifest(
        tmp_path / "m.yaml",
        """
        version: 1
        campaign: unsaved
        jobs:
          - {id: clip, model: grok-video-3, duration: 5, ratio: "1:1", prompt: a clip}
          - {id: still, model: jimeng-5.0, prompt: a still}
        """,
    )
    ledger = tmp_path / "l.db"
    result = on_sandbox(sandbox, "run", str(manifest), "--no-download", *FAST, ledger=ledger)
    assert result.returncode == 0, result.stderr
    keys = ("unsaved/clip", "unsaved/still")
    with serving(tmp_path, "--ledger", str(ledger)) as url:
        load(browser, url)
        for key in keys:
            state = media_shown(browser, key)
            assert state["local"] == "0" and state["src"].startswith(sandbox.base_url)
        marks = browser.execute_script(
            "return [...document.querySelectorAll('.media .remote')].map(e => e.textContent)"
        )
        assert marks == ["not saved locally: from the service's URL"] * 2
        assert [badge(browser, key) for key in keys] == [""] * 2  # nothing read yet

        # Saved: the open page shows each file's marks, read as it was saved.
        result = on_sandbox(sandbox, "download", "--out", str(tmp_path / "out"), ledger=ledger)
        assert result.returncode == 0, result.stderr
        for key in keys:
            wait(browser, f"{key}'s marks", lambda d, k=key: badge(d, k) != "")
            assert badge(browser, key) == "C2PA ✓ Okaypic Sandbox"
            assert media_shown(browser, key)["local"] == "1"
        go_to(browser, "unsaved/still")
        press(browser, "\n")
        wait(browser, "the lightbox", lambda d: lightbox(d)["key"] == "unsaved/still")
        details = browser.find_element(By.ID, "lb-marks").get_attribute("textContent")
        for fact in (
            "C2PA ✓ Okaypic Sandbox",
            "issuer Okaypic Sandbox",
            "claim generator",
            "digital source type trainedAlgorithmicMedia",
            "validation valid",
        ):
            assert fact in details, details
        press(browser, "\ue00c")  # Esc
        # The marks filter: applied by the server, over the whole ledger.
        for marks, shown in (("invalid", []), ("none", []), ("valid", sorted(keys))):
            Select(browser.find_element(By.ID, "f-marks")).select_by_value(marks)
            wait(browser, f"marks {marks}", lambda d, s=shown: sorted(keys_of_the_grid(d)) == s)
        assert severe_logs(browser, origin=url) == []


def badge(driver: WebDriver, key: str) -> str:
    """The marks badge of a result's card (its file's provenance), as shown."""
    return driver.find_element(
        By.CSS_SELECTOR, f'article.card[data-key="{key}"] .marks'
    ).get_attribute("textContent")


def test_a_large_ledger_is_shown_a_page_at_a_time_and_filtered_by_the_server(browser, tmp_path):
    from tests.builders import complete, grok, make_ledger

    ledger = make_ledger(tmp_path / "l.db", [grok(f"clip-{i:03d}") for i in range(230)])
    complete(ledger, "clip-229", urls=[])  # the last job: the only completed one
    ledger.close()
    with serving(tmp_path, "--ledger", str(tmp_path / "l.db")) as url:
        load(browser, url)

        def cards(d: WebDriver) -> int:
            return int(d.execute_script("return document.querySelectorAll('article.card').length"))

        def more_shown(d: WebDriver) -> bool:
            return not d.find_element(By.ID, "more").get_attribute("hidden")

        assert cards(browser) == 200 and more_shown(browser)
        assert "230 jobs · 200 shown (more below)" in browser.find_element(By.ID, "summary").text
        browser.find_element(By.ID, "more-button").click()
        wait(browser, "the next page", lambda d: cards(d) == 230 and not more_shown(d))
        # A filter asks the server, over the whole ledger: the one completed job is found
        # even when only the first page was shown.
        browser.refresh()
        load(browser, url)
        Select(browser.find_element(By.ID, "f-status")).select_by_value("completed")
        wait(browser, "the filtered answer", lambda d: cards(d) == 1)
        key = browser.execute_script("return document.querySelector('article.card').dataset.key")
        assert key == "c/clip-229"
        Select(browser.find_element(By.ID, "f-status")).select_by_value("")
        browser.find_element(By.ID, "f-text").send_keys("CLIP-21")  # ids clip-210..219
        wait(browser, "the search's answer", lambda d: cards(d) == 10)


# -- judging at full size, compare, who decided, a teammate -----------------------------------

TAKES = """
version: 1
campaign: takes
budget_usd: 5.00
defaults: {ratio: "3:2", tags: [takes]}
jobs:
  - id: "poster-{take}"            # three takes of one image prompt
    model: jimeng-5.0
    prompt: Minimalist poster of a red bicycle
    takes: 3
  - id: "clip-{model}"             # one video prompt on two models
    prompt: A sneaker on a turntable, neon lighting
    duration: 5
    matrix:
      model: [grok-video-3, jimeng-video-seedance-2.0-fast]
"""


@pytest.fixture(scope="module")
def takes_run(tmp_path_factory) -> Path:
    """A folder where a sandbox run of TAKES has finished: a prompt with three images, one
    with two videos."""
    folder = tmp_path_factory.mktemp("takes")
    (folder / "takes.yaml").write_text(TAKES, encoding="utf-8")
    result = batchgen("run", "takes.yaml", "--sandbox", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def lightbox(driver: WebDriver) -> dict[str, str]:
    """The lightbox's state: hidden, key (the result shown), pinned, zoom, frame."""
    return driver.execute_script(
        "const b = document.getElementById('lightbox');"
        "return {...b.dataset, hidden: b.hidden ? '1' : '0'}"
    )


def keys_of_the_grid(driver: WebDriver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('article.card:not([hidden])')]"
        ".map(c => c.dataset.key)"
    )


PANE_MEDIA = """
const id = arguments[0];
const media = document.querySelector(`#${id} .lb-media img, #${id} .lb-media video`);
if (!media) return null;
const natural = media.naturalWidth || media.videoWidth;
const ok = media.tagName === 'IMG' ? media.complete && natural > 0 : media.readyState >= 2;
return {ok: ok, natural: natural, shown: media.getBoundingClientRect().width,
        pane: media.parentElement.getBoundingClientRect().width,
        src: media.getAttribute('src'), paused: media.paused === undefined ? null : media.paused,
        time: media.currentTime === undefined ? null : media.currentTime};
"""


def pane(driver: WebDriver, which: str = "lb-main") -> dict[str, Any]:
    return wait(driver, f"the {which} pane's media", lambda d: (d.execute_script(
        PANE_MEDIA, which) or {}).get("ok") and d.execute_script(PANE_MEDIA, which))  # fmt: skip


def no_reload_since(driver: WebDriver) -> bool:
    """Whether the page is the one `mark_page` marked (no full-page load since)."""
    return driver.execute_script("return window.__marked === true") is True


def mark_page(driver: WebDriver) -> None:
    driver.execute_script("window.__marked = true")


def test_the_lightbox_opens_steps_through_the_results_zooms_and_steps_a_videos_frames(
    takes_run, browser
):
    with serving(takes_run) as url:
        load(browser, url)
        order = keys_of_the_grid(browser)
        assert len(order) == 5
        mark_page(browser)
        press(browser, "g")
        press(browser, "\n")  # Enter opens the current result at full size
        assert lightbox(browser)["hidden"] == "0" and lightbox(browser)["key"] == order[0]
        first = pane(browser)
        assert first["src"].startswith("/files/takes/")
        # The arrows step through the filtered results, in the grid's order, without a reload.
        for key in order[1:]:
            press(browser, "\ue014")  # →
            wait(browser, f"{key} in the lightbox", lambda d, k=key: lightbox(d)["key"] == k)
            assert pane(browser)["src"] != first["src"]
        press(browser, "\ue012")  # ←
        wait(browser, "a step back", lambda d: lightbox(d)["key"] == order[-2])
        assert no_reload_since(browser)

        # Zoom: an image at 100% is shown at its own size, then fit to the screen again.
        go_to_in_lightbox(browser, "takes/poster-1")
        fit = pane(browser)
        assert lightbox(browser)["zoom"] == "fit" and fit["shown"] > fit["natural"]
        press(browser, "z")
        wait(browser, "100%", lambda d: pane(d)["shown"] == pane(d)["natural"])
        assert lightbox(browser)["zoom"] == "actual"
        press(browser, "z")
        wait(browser, "fit again", lambda d: pane(d)["shown"] > pane(d)["natural"])

        # A video: paused with Space, one frame on with `.`, one back with `,`.
        go_to_in_lightbox(browser, "takes/clip-grok-video-3")
        pane(browser)
        wait(
            browser,
            "its frame length, measured",
            lambda d: lightbox(d).get("frameLength") == "0.1000",
        )  # fmt: skip  (the sandbox's videos have 10 frames a second)
        press(browser, " ")
        wait(browser, "the pause", lambda d: pane(d)["paused"] is True)
        before = pane(browser)["time"]
        frame = int(before * 10 + 1e-3)
        wait(browser, "the frame shown", lambda d: int(lightbox(d)["frame"]) == frame)
        press(browser, ".")
        wait(browser, "the next frame", lambda d: int(lightbox(d)["frame"]) == frame + 1)
        assert pane(browser)["time"] > before and pane(browser)["paused"] is True
        press(browser, ",")
        wait(browser, "the frame before", lambda d: int(lightbox(d)["frame"]) == frame)
        press(browser, "\ue00c")  # Esc
        wait(browser, "the lightbox closed", lambda d: lightbox(d)["hidden"] == "1")
        # A click on a result's picture opens it too (scrolled clear of the page's header,
        # which stays on top: Selenium clicks where the picture's middle is).
        picture = browser.find_element(
            By.CSS_SELECTOR, 'article.card[data-key="takes/poster-3"] .media'
        )
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", picture)
        picture.click()
        wait(browser, "the click", lambda d: lightbox(d)["key"] == "takes/poster-3")
        assert no_reload_since(browser)
        help_text = browser.find_element(By.ID, "help").get_attribute("textContent")
        for what in ("zoom", "one frame back", "pin this result to compare", "tile size"):
            assert what in help_text
        assert severe_logs(browser, origin=url) == []


def go_to_in_lightbox(driver: WebDriver, key: str) -> None:
    press(driver, "g")
    for _ in range(20):
        if lightbox(driver)["key"] == key:
            return
        press(driver, "j")
    raise AssertionError(f"j never reached {key} in the lightbox")


def test_compare_pins_a_result_and_steps_through_the_other_takes_of_its_prompt(takes_run, browser):
    with serving(takes_run) as url:
        load(browser, url)
        mark_page(browser)
        go_to(browser, "takes/poster-1")
        press(browser, "p")  # pin: the lightbox opens with another take beside it
        wait(browser, "compare", lambda d: lightbox(d).get("compare") == "1")
        assert lightbox(browser)["pinned"] == "takes/poster-1"
        assert lightbox(browser)["key"] == "takes/poster-2"
        assert pane(browser, "lb-pinned")["src"] == "/files/takes/poster-1/0"
        press(browser, "\ue014")
        wait(browser, "the third take", lambda d: lightbox(d)["key"] == "takes/poster-3")
        press(browser, "\ue014")  # the last take of this prompt: no other prompt comes in
        assert lightbox(browser)["key"] == "takes/poster-3"
        assert lightbox(browser)["pinned"] == "takes/poster-1"
        # The same zoom on both sides.
        press(browser, "z")
        for side in ("lb-main", "lb-pinned"):
            wait(browser, f"{side} at 100%", lambda d, s=side: pane(d, s)["shown"]
                 == pane(d, s)["natural"])  # fmt: skip
        press(browser, "\ue012")
        wait(browser, "back to the second", lambda d: lightbox(d)["key"] == "takes/poster-2")
        press(browser, "p")  # unpin: the arrows go through every result again
        wait(browser, "unpinned", lambda d: lightbox(d)["compare"] == "0")
        assert no_reload_since(browser)


def test_a_reviewer_gives_a_name_once_and_it_is_recorded_with_each_verdict(takes_run, browser):
    with serving(takes_run) as url:
        load(browser, url)
        go_to(browser, "takes/poster-1")
        press(browser, "\n")
        press(browser, "a")  # in the lightbox: approve, then on to the next
        give_name(browser, "Grace")
        wait(browser, "the approval", lambda d: verdict_of(d, "takes/poster-1") == "approved")
        wait(browser, "the next one", lambda d: lightbox(d)["key"] == "takes/poster-2")
        press(browser, "r")
        note = browser.find_element(By.ID, "note-text")
        wait(browser, "the note box", lambda d: note.is_displayed())
        note.send_keys("the wheel is square")
        press(browser, "\n")
        wait(browser, "the rejection", lambda d: verdict_of(d, "takes/poster-2") == "rejected")
        wait(browser, "the next one", lambda d: lightbox(d)["key"] == "takes/poster-3")
        history = browser.find_element(By.ID, "lb-history")
        press(browser, "\ue012")  # back to the rejected one: its history, who and why
        wait(browser, "its history", lambda d: "rejected by Grace" in history.text)
        assert "the wheel is square" in history.text
        press(browser, "\ue00c")
        # Kept in this browser: a reload asks no name again.
        browser.refresh()
        load(browser, url)
        assert "reviewing as Grace" in browser.find_element(By.ID, "who").text
        go_to(browser, "takes/poster-3")
        press(browser, "a")
        wait(browser, "no name asked", lambda d: verdict_of(d, "takes/poster-3") == "approved")
        card = browser.find_element(By.CSS_SELECTOR, 'article.card[data-key="takes/poster-1"]')
        assert card.find_element(By.CLASS_NAME, "who").text.startswith("by Grace")
        # The reviewer filter, and the ledger.
        wait(browser, "Grace as a choice", lambda d: "Grace" in [
            o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#f-reviewer option")
        ])  # fmt: skip
        Select(browser.find_element(By.ID, "f-reviewer")).select_by_value("Grace")
        wait(browser, "the filter", lambda d: sorted(keys_of_the_grid(d)) == [
            "takes/poster-1", "takes/poster-2", "takes/poster-3"])  # fmt: skip
    report = batchgen("report", "--jobs", "--json", cwd=takes_run)
    jobs = {j["id"]: j for j in json.loads(report.stdout)["jobs"]}
    assert {k: (j["verdict"], j["reviewer"]) for k, j in jobs.items() if j["verdict"]} == {
        "poster-1": ("approved", "Grace"),
        "poster-2": ("rejected", "Grace"),
        "poster-3": ("approved", "Grace"),
    }


def test_a_teammate_reviews_through_the_share_link_and_without_it_nothing_is_given(
    takes_run, browsers
):
    import httpx

    with serving(takes_run, share=True) as (url, link):
        teammate = browsers()  # another person's browser: nothing stored, no cookie
        load(teammate, link)
        state = media_shown(teammate, "takes/clip-grok-video-3")
        assert state["local"] == "1"  # the saved files, through the cookie the link set
        go_to(teammate, "takes/clip-grok-video-3")
        press(teammate, "a")
        give_name(teammate, "Lin")
        wait(teammate, "the approval", lambda d: verdict_of(d, "takes/clip-grok-video-3")
             == "approved")  # fmt: skip
        # The person at the machine sees it, and who gave it.
        me = browsers()
        load(me, url)
        card = me.find_element(By.CSS_SELECTOR, 'article.card[data-key="takes/clip-grok-video-3"]')
        wait(me, "Lin's verdict", lambda d: card.get_attribute("data-reviewer") == "Lin")

        # Without the token: a refusal, no data and no file (from this machine too).
        base = link.split("?", 1)[0]
        for path in ("", "api/results", "files/takes/clip-grok-video-3/0", "static/review.js"):
            answer = httpx.get(base + path)
            assert answer.status_code == 401 and set(answer.json()) == {"error"}, path
            assert b"sneaker" not in answer.content
        stranger = browsers()
        stranger.get(base)
        assert "token" in stranger.find_element(By.TAG_NAME, "body").text
        assert "sneaker" not in stranger.page_source


TILES = """
const main = document.getElementById('groups');
const style = getComputedStyle(main);
const width = main.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
const cards = [...document.querySelectorAll('article.card')];
const tile = cards[0].getBoundingClientRect().width;
const fit = getComputedStyle(cards[0].querySelector('.media img, .media video')).objectFit;
return {size: document.body.dataset.size, columns: Number(document.body.dataset.columns),
        width: width, tile: tile, fit: fit};
"""


def test_tiles_come_in_three_sizes_that_fill_a_1280_pixel_screen(takes_run, browser):
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    with serving(takes_run) as url:
        load(browser, url)
        seen = {}
        for _ in range(3):
            tiles = browser.execute_script(TILES)
            seen[tiles["size"]] = tiles["columns"]
            # as many columns as fit, and together (with their gaps) the whole width
            gaps = 10 * (tiles["columns"] - 1)
            assert tiles["width"] - tiles["columns"] - gaps <= tiles["tile"] * tiles["columns"]
            assert tiles["tile"] * tiles["columns"] + gaps <= tiles["width"]
            assert tiles["fit"] == "contain"  # letterboxed: the whole composition
            press(browser, "t")
            wait(browser, "the next size", lambda d, s=tiles["size"]: d.execute_script(
                "return document.body.dataset.size") != s)  # fmt: skip
        assert seen == {"m": 4, "l": 2, "s": 6}
        press(browser, "t")  # large again
        browser.refresh()  # the size chosen is kept in this browser
        load(browser, url)
        assert browser.execute_script("return document.body.dataset.size") == "l"


# -- docs/review.md's pictures ------------------------------------------------------------------


@pytest.mark.skipif(not SHOTS, reason="BATCHGEN_SCREENSHOTS=docs takes docs/review.md's pictures")
def test_screenshots_of_the_grid_the_lightbox_and_compare(tmp_path, browser):
    """From a sandbox run of the spring-launch example, at 1280x800."""
    assert SHOTS
    for name in ("spring-launch.yaml", "prompts.csv", "social.jsonl"):
        shutil.copy(ROOT / "manifests" / name, tmp_path / name)
    result = batchgen("run", "spring-launch.yaml", "--sandbox", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    out = Path(SHOTS)
    out.mkdir(parents=True, exist_ok=True)
    with serving(tmp_path) as url:
        load(browser, url)
        browser.execute_script("localStorage.setItem('batchgen.review.reviewer', 'Ada')")
        browser.refresh()
        load(browser, url)
        go_to(browser, "spring-launch/cat-piano")
        press(browser, "a")
        wait(browser, "a verdict", lambda d: verdict_of(d, "spring-launch/cat-piano")
             == "approved")  # fmt: skip
        wait(browser, "the toast gone", lambda d: d.find_element(By.ID, "toast")
             .get_attribute("hidden") is not None)  # fmt: skip
        for key in keys_of_the_grid(browser)[:8]:
            media_shown(browser, key)
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(out / "review-grid.png"))
        press(browser, "\n")
        pane(browser)
        browser.save_screenshot(str(out / "review-lightbox.png"))
        press(browser, "p")
        wait(browser, "compare", lambda d: lightbox(d).get("compare") == "1")
        pane(browser, "lb-pinned")
        pane(browser)
        browser.save_screenshot(str(out / "review-compare.png"))
