"""The web console in a real headless Chromium (Debian's ``chromium`` + ``chromedriver``, driven by Selenium)
against a real server with authentication on and two tenants (strict mode: real runsc sandboxes).

One browser and one server for the module; the tests run in file order and share the jobs they make.
Screenshots of the main pages go to ``$TAKO_CONSOLE_SCREENSHOTS`` when it is set (docs/console.md's
images were taken this way: ``TAKO_CONSOLE_SCREENSHOTS=docs/images/console``).

The sandbox's root filesystem has no matplotlib (scripts/build-rootfs.sh installs python3 and pip
only): the real plot job asks for ``requirements: ["matplotlib"]``, installed from PyPI by the install
sandbox (about 25 s the first time on this machine; the server's requirement cache keeps it for later
jobs). A second job writes a PNG by hand and an SVG with a script in it: that one proves an SVG's
script never runs, which no matplotlib output would test.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandbox_server import needs_runsc, strict_server

from tako_vm import Client
from tako_vm.testing import LocalServer

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (the dev extra has it)")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
KEY_A = "console-key-team-a-0123"
KEY_B = "console-key-team-b-0123"

pytestmark = [
    pytest.mark.sandbox,
    needs_runsc,
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
        reason="chromium and chromedriver not installed (scripts/install-browser.sh installs them)",
    ),
]

HOSTILE = (
    "print('<script>window.__pwned = 1; console.log(\"PWNED\")</script>')\n"
    "print('<img src=x onerror=\"window.__pwned = 2\">')\n"
)
# A 2x2 PNG (stdlib only) and an SVG whose script must never run: written to /output as artifacts.
IMAGES = r"""
import struct, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = b"".join(b"\x00" + b"\xd9\x53\x4f" * 2 for _ in range(2))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
open("/output/plot.png", "wb").write(png)
open("/output/chart.svg", "w").write(
    '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="60">'
    '<script>parent.__pwned = 3</script><rect width="120" height="60" fill="#7aa7e8"/></svg>')
print("wrote 2 images")
"""
# A real matplotlib figure: 4 x 3 inches at 100 dpi is a 400 x 300 PNG.
PLOT = r"""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
ax.plot([0, 1, 2, 3, 4], [1, 4, 2, 5, 3], marker="o")
ax.set_title("tako plot")
fig.savefig("/output/plot.png")
print("matplotlib", matplotlib.__version__)
"""
PLOT_INSTALL_SECONDS = 600  # a first install from PyPI on a loaded 2-core machine
LIVE = "import time\nfor i in range(4):\n    print(f'line {i}', flush=True)\n    time.sleep(1)\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with strict_server(
        tmp_path_factory,
        "console",
        api_auth_enabled=True,
        api_keys={KEY_A: "team-a", KEY_B: "team-b"},
        api_rate_limit_requests=2000,
        api_rate_limit_enabled=True,  # STRICT_SETTINGS turn it off
        allow_runtime_requirements=True,  # the matplotlib job installs it (loopback: the default anyway)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def sdk(server: LocalServer) -> Iterator[Client]:
    with Client(base_url=server.url, api_key=KEY_A) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shared() -> dict[str, Any]:
    return {}


def wait(driver: WebDriver, seconds: float = 30) -> WebDriverWait[WebDriver]:
    # A running job's page reloads itself when the result arrives: an element found just before the
    # reload is stale when read, which only means "look again".
    return WebDriverWait(
        driver, seconds, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )


def screenshot(driver: WebDriver, name: str) -> None:
    target = os.environ.get("TAKO_CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / f"{name}.png"))


def console_log(driver: WebDriver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")]


def log_in(driver: WebDriver, server: LocalServer, key: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{server.url}/console/executions")
    wait(driver).until(lambda d: d.current_url.endswith("/console/login"))
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.ID, "login-submit").click()
    wait(driver).until(lambda d: d.current_url.endswith("/console/overview"))


def text_by_id(driver: WebDriver, element_id: str) -> str:
    """An element's text on a page that may reload itself (a running job's page does when it ends)."""
    return str(
        wait(driver).until(
            lambda d: d.execute_script(
                "const e = document.getElementById(arguments[0]); return e && e.innerText", element_id
            )
        )
    )


def finished(sdk: Client, job_id: str) -> dict[str, Any]:
    record = sdk.get_result(job_id, timeout=120)
    assert record["status"] == "succeeded", record
    return record


def test_log_in_with_a_key_then_the_list_shows_a_job_the_sdk_submitted(
    server: LocalServer, sdk: Client, browser: WebDriver, shared: dict[str, Any]
) -> None:
    job_id = sdk.submit_code(HOSTILE)
    shared["hostile"] = job_id
    finished(sdk, job_id)
    browser.get(f"{server.url}/console/overview")
    assert browser.current_url.endswith("/console/login")  # nothing readable without the cookie
    screenshot(browser, "login")
    browser.find_element(By.ID, "api-key").send_keys("not-a-key-0123456789")
    browser.find_element(By.ID, "login-submit").click()
    error = wait(browser).until(lambda d: d.find_elements(By.ID, "login-error"))
    assert "not valid" in error[0].text, browser.page_source
    browser.find_element(By.ID, "api-key").send_keys(KEY_A)
    browser.find_element(By.ID, "login-submit").click()
    wait(browser).until(lambda d: d.current_url.endswith("/console/overview"))
    cookie = browser.get_cookie("tako_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert KEY_A not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script can read it
    assert browser.find_element(By.ID, "tenant").text == "team-a"
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")) == 120  # 60 minutes x 2 bars
    screenshot(browser, "overview")
    browser.find_element(By.LINK_TEXT, "Executions").click()
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{job_id}"]')
    assert "succeeded" in row.text and "print('<script>" in row.text
    screenshot(browser, "executions")


def test_its_page_shows_stdout_as_text_and_a_script_in_it_runs_nothing(
    server: LocalServer, browser: WebDriver, shared: dict[str, Any]
) -> None:
    browser.get_log("browser")  # drop earlier entries
    browser.get(f"{server.url}/console/executions/{shared['hostile']}")
    stdout = browser.find_element(By.ID, "stdout")
    assert stdout.text.splitlines() == [
        '<script>window.__pwned = 1; console.log("PWNED")</script>',
        '<img src=x onerror="window.__pwned = 2">',
    ]
    assert stdout.find_elements(By.XPATH, ".//*") == []  # text only: no element was parsed from it
    time.sleep(0.5)  # an onerror handler would have fired by now
    assert browser.execute_script("return window.__pwned") is None
    messages = console_log(browser)
    assert not any("PWNED" in message for message in messages)
    assert not [m for m in messages if "Content Security Policy" in m]  # the page needs no exception
    assert browser.find_elements(By.CSS_SELECTOR, "#code .highlight")  # highlighted code, escaped too
    assert "<script>" in browser.find_element(By.ID, "code").text


def test_a_real_matplotlib_plot_renders_as_an_image(
    server: LocalServer, sdk: Client, browser: WebDriver, shared: dict[str, Any]
) -> None:
    job_id = sdk.submit_code(PLOT, requirements=["matplotlib"], startup_timeout=PLOT_INSTALL_SECONDS)
    record = sdk.get_result(job_id, timeout=PLOT_INSTALL_SECONDS + 60)
    assert record["status"] == "succeeded", record
    assert record["stdout"].startswith("matplotlib 3."), record["stdout"]
    [artifact] = sdk.get_execution(job_id, view="full")["artifacts"]
    assert artifact["name"] == "plot.png"
    browser.get(f"{server.url}/console/executions/{job_id}")
    assert "matplotlib" in browser.find_element(By.ID, "requirements").text
    image = browser.find_element(By.CSS_SELECTOR, "img.artifact")
    wait(browser).until(lambda d: d.execute_script("return arguments[0].complete", image))
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert size == [400, 300], size  # decoded, and the figure's size: the PNG matplotlib drew
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    with httpx.Client(base_url=server.url, cookies=cookies, timeout=30) as http:
        served = http.get(image.get_attribute("src") or "")
    assert served.headers["content-type"] == "image/png"
    assert served.content.startswith(b"\x89PNG") and b"Matplotlib" in served.content  # its Software tag
    assert hashlib.sha256(served.content).hexdigest() == artifact["sha256"]
    assert not [m for m in console_log(browser) if "Content Security Policy" in m]
    browser.execute_script("arguments[0].scrollIntoView()", image)
    screenshot(browser, "plot")


def test_hand_written_png_and_svg_artifacts_render_inline_and_the_svg_script_never_runs(
    server: LocalServer, sdk: Client, browser: WebDriver, shared: dict[str, Any]
) -> None:
    job_id = sdk.submit_code(IMAGES)
    shared["images"] = job_id
    finished(sdk, job_id)
    record = sdk.get_execution(job_id, view="full")
    names = {a["name"]: a["sha256"] for a in record["artifacts"]}
    assert set(names) == {"plot.png", "chart.svg"}
    browser.get(f"{server.url}/console/executions/{job_id}")
    images = browser.find_elements(By.CSS_SELECTOR, "img.artifact")
    assert len(images) == 2
    for image in images:  # decoded and drawn: a broken image has naturalWidth 0
        wait(browser).until(lambda _d, img=image: browser.execute_script("return arguments[0].complete", img))
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 0
    assert browser.execute_script("return window.__pwned") is None  # the SVG's script never ran
    assert not [m for m in console_log(browser) if "Content Security Policy" in m]
    table = browser.find_element(By.ID, "artifacts").text
    assert all(sha in table for sha in names.values())
    link = browser.find_element(By.CSS_SELECTOR, "#artifacts a[download]").get_attribute("href")
    assert link is not None and "/console/executions/" in link
    screenshot(browser, "execution")


def test_rerun_and_fork_create_linked_jobs(
    server: LocalServer, sdk: Client, browser: WebDriver, shared: dict[str, Any]
) -> None:
    parent = shared["hostile"]
    browser.get(f"{server.url}/console/executions/{parent}")
    browser.find_element(By.ID, "rerun").click()
    wait(browser).until(lambda d: not d.current_url.endswith(parent))
    rerun_id = text_by_id(browser, "execution-id")
    assert text_by_id(browser, "parent-link") == parent

    browser.get(f"{server.url}/console/executions/{parent}")
    code = browser.find_element(By.ID, "fork-code")
    code.clear()
    code.send_keys("print('forked from the console')")
    browser.find_element(By.ID, "fork").click()
    wait(browser).until(lambda d: not d.current_url.endswith(parent))
    fork_id = text_by_id(browser, "execution-id")
    assert text_by_id(browser, "parent-link") == parent
    assert finished(sdk, fork_id)["stdout"] == "forked from the console\n"
    for child, relationship in ((rerun_id, "rerun"), (fork_id, "fork")):
        record = sdk.get_execution(child, view="full")
        assert (record["parent_execution_id"], record["relationship"]) == (parent, relationship)
    browser.get(f"{server.url}/console/executions/{parent}")
    children = {a.text for a in browser.find_elements(By.CSS_SELECTOR, "#lineage a.child-link")}
    assert children == {f"rerun: {rerun_id}", f"fork: {fork_id}"}


def test_a_form_without_the_csrf_token_changes_nothing(server: LocalServer, browser: WebDriver) -> None:
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    before = len(Client(base_url=server.url, api_key=KEY_A).list_executions(limit=100)["items"])
    with httpx.Client(base_url=server.url, cookies=cookies, timeout=30) as http:
        job = re.sub(r".*/", "", browser.current_url)
        for token in ({}, {"csrf": "forged"}):
            response = http.post(f"/console/executions/{job}/rerun", data=token)
            assert response.status_code == 403 and "CSRF" in response.text
    assert len(Client(base_url=server.url, api_key=KEY_A).list_executions(limit=100)["items"]) == before


def test_another_tenants_job_is_404(server: LocalServer, browser: WebDriver, shared: dict[str, Any]) -> None:
    log_in(browser, server, KEY_B)
    assert browser.find_element(By.ID, "tenant").text == "team-b"
    browser.get(f"{server.url}/console/executions/{shared['hostile']}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "404"
    assert "print(" not in browser.page_source
    browser.get(f"{server.url}/console/executions/{shared['images']}/artifacts/plot.png?inline=1")
    assert "404" in browser.page_source
    browser.get(f"{server.url}/console/executions")
    assert browser.find_elements(By.CSS_SELECTOR, "tr[data-id]") == []
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    with httpx.Client(base_url=server.url, cookies=cookies, timeout=30) as http:  # the status code itself
        assert http.get(f"/console/executions/{shared['hostile']}").status_code == 404
    log_in(browser, server, KEY_A)


def test_a_job_printing_over_3_s_shows_lines_appearing_live(
    server: LocalServer, sdk: Client, browser: WebDriver
) -> None:
    job_id = sdk.submit_code(LIVE)
    browser.get(f"{server.url}/console/executions/{job_id}")
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(seen) < 4 and time.monotonic() < deadline:
        try:
            text = browser.find_element(By.ID, "stdout").text
        except Exception:  # the page reloads itself when the result arrives
            continue
        for i in range(4):
            if f"line {i}" in text and f"line {i}" not in seen:
                seen[f"line {i}"] = time.monotonic()
        time.sleep(0.05)
    assert len(seen) == 4, seen
    spread = seen["line 3"] - seen["line 0"]
    assert spread >= 2.0, f"the lines arrived together ({spread:.2f} s apart): not live"
    try:
        wait(browser, 60).until(lambda d: d.find_element(By.ID, "status").text == "succeeded")
    except TimeoutException:
        pytest.fail(f"the page never showed the finished job: {browser.find_element(By.ID, 'status').text}")


SESSION_CELLS = [
    "x = 21",
    "print('<script>window.__pwned = 5</script>')\nx * 2",
    "1 / 0",
]


def cell_texts(driver: WebDriver) -> list[tuple[str, str]]:
    """(execution id, text) of the session page's cells, read in one script (htmx swaps the list)."""
    found = driver.execute_script(
        "return Array.from(document.querySelectorAll('#cells li.cell'))"
        ".map(li => [li.dataset.id, li.innerText.trim()])"
    )
    return [(str(i), str(t)) for i, t in found]


def test_the_sessions_page_lists_an_open_session_whose_page_shows_its_executions_in_order(
    server: LocalServer, sdk: Client, browser: WebDriver, shared: dict[str, Any]
) -> None:
    created = sdk.create_session(ttl_seconds=900)
    sid = created.session_id
    shared["session"] = sid
    ran = [sdk.run_in_session(sid, code) for code in SESSION_CELLS]
    assert [r.status for r in ran] == ["succeeded", "succeeded", "failed"]
    shared["session_cells"] = [r.execution_id for r in ran]
    browser.get_log("browser")
    browser.get(f"{server.url}/console/overview")
    browser.find_element(By.LINK_TEXT, "Sessions").click()
    row = wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#sessions tr[data-id="{sid}"]'))
    assert "ready" in row[0].text and row[0].text.split()[-1] == "3"  # open, 3 executions
    screenshot(browser, "sessions")
    row[0].find_element(By.CSS_SELECTOR, "a.session-link").click()
    wait(browser).until(lambda d: d.current_url.endswith(f"/console/sessions/{sid}"))
    cells = cell_texts(browser)
    assert [c[0] for c in cells] == shared["session_cells"]  # in the order they ran
    assert cells[0][1].startswith("[1] succeeded") and "x = 21" in cells[0][1]
    second = cells[1][1]
    assert "<script>window.__pwned = 5</script>" in second  # stdout, as text
    assert "Out[2]: 42" in second
    assert "[3] failed" in cells[2][1] and "ZeroDivisionError" in cells[2][1]
    stdout = browser.find_element(By.CSS_SELECTOR, f'li[data-id="{ran[1].execution_id}"] pre.stdout')
    assert stdout.find_elements(By.XPATH, ".//*") == []
    assert browser.execute_script("return window.__pwned") is None
    assert re.fullmatch(r"\[1\] succeeded \S+ \S+ · [\d.]+ m?s · execution", cells[0][1].splitlines()[0])
    assert not [m for m in console_log(browser) if "Content Security Policy" in m]
    screenshot(browser, "session")


def test_a_sessions_new_execution_appears_on_its_open_page_without_a_reload(
    server: LocalServer, sdk: Client, browser: WebDriver, shared: dict[str, Any]
) -> None:
    sid = shared["session"]
    assert browser.current_url.endswith(f"/console/sessions/{sid}")
    browser.execute_script("window.__same_page = 1")
    late = sdk.run_in_session(sid, "print('a late cell')\nx + 1")
    try:
        wait(browser, 30).until(lambda d: len(cell_texts(d)) == 4)
    except TimeoutException:
        pytest.fail(f"the new execution never appeared: {cell_texts(browser)}")
    last_id, last_text = cell_texts(browser)[-1]
    assert last_id == late.execution_id and "a late cell" in last_text and "Out[4]: 22" in last_text
    assert browser.execute_script("return window.__same_page") == 1  # swapped in place, not reloaded
    assert browser.find_element(By.ID, "session-count").text == "4"
    shared["session_cells"].append(late.execution_id)


def test_the_executions_list_filters_by_session_and_links_to_its_page(
    server: LocalServer, browser: WebDriver, shared: dict[str, Any]
) -> None:
    sid = shared["session"]
    browser.find_element(By.ID, "session-executions-link").click()
    wait(browser).until(lambda d: "session_id=" in d.current_url)
    ids = [r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-id]")]
    assert ids == list(reversed(shared["session_cells"]))  # exactly the session's, newest first
    assert browser.find_element(By.ID, "session-filter").get_attribute("value") == sid
    browser.get(f"{server.url}/console/executions")  # unfiltered: one-shot jobs and session cells
    ids = [r.get_attribute("data-id") for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-id]")]
    assert shared["hostile"] in ids and set(shared["session_cells"]) <= set(ids)
    field = browser.find_element(By.ID, "session-filter")
    field.send_keys(sid)
    field.submit()
    wait(browser).until(lambda d: "session_id=" in d.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-id]")
    assert {r.get_attribute("data-id") for r in rows} == set(shared["session_cells"])
    screenshot(browser, "session-executions")
    rows[0].find_element(By.CSS_SELECTOR, "a.session-link").click()
    wait(browser).until(lambda d: d.current_url.endswith(f"/console/sessions/{sid}"))
    browser.get(f"{server.url}/console/executions/{shared['session_cells'][1]}")  # one cell's own page
    assert browser.find_element(By.ID, "session-link").text == sid
    assert browser.find_element(By.ID, "session-result").text == "42"


def test_another_tenants_session_is_404(
    server: LocalServer, sdk: Client, browser: WebDriver, shared: dict[str, Any]
) -> None:
    sid = shared["session"]
    log_in(browser, server, KEY_B)
    browser.get(f"{server.url}/console/sessions/{sid}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "404"
    assert "x = 21" not in browser.page_source and "a late cell" not in browser.page_source
    browser.get(f"{server.url}/console/sessions")
    assert sid not in browser.page_source
    browser.get(f"{server.url}/console/executions?session_id={sid}")
    assert browser.find_elements(By.CSS_SELECTOR, "tr[data-id]") == []
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    with httpx.Client(base_url=server.url, cookies=cookies, timeout=30) as http:
        assert http.get(f"/console/sessions/{sid}").status_code == 404
        part = http.get(f"/console/sessions/{sid}?part=executions&mark=x", headers={"HX-Request": "true"})
        assert part.status_code == 404
    log_in(browser, server, KEY_A)
    sdk.delete_session(sid)
    browser.get(f"{server.url}/console/sessions/{sid}")  # an ended session keeps its page, without polling
    assert browser.find_element(By.ID, "session-status").text == "ended"
    assert browser.find_element(By.ID, "end-reason").text == "deleted"
    assert browser.find_element(By.ID, "session").get_attribute("hx-trigger") is None
    assert len(cell_texts(browser)) == 4
