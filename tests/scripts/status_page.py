#!/usr/bin/python3
"""Drives edgelb's status page in headless Chromium (Selenium) for tests/tests/status_page.rs.

Talks to the Rust test in lines: it prints what it saw on stdout (READY, UNHEALTHY, BASELINE,
DROPS, RELOADED, OK, or FAIL with the reason) and waits on stdin for what the test did
(KILLED: the backend process is dead; CONNECTED: the blacklisted client has tried). Every
wait is bounded; on failure it prints FAIL and the page's text to stderr and exits 1.

Debian's python3-selenium (4.8), chromium and chromium-driver; run it with the system python3.
"""
import argparse
import select
import shutil
import signal
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


class Failure(Exception):
    pass


def say(line):
    print(line, flush=True)


def expect_line(word, timeout):
    """Waits for the test to write `word` on stdin."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        raise Failure(f"the test did not send {word} within {timeout} s")
    line = sys.stdin.readline().strip()
    if line != word:
        raise Failure(f"expected {word} from the test, got {line!r}")


def text(driver, css):
    """The rendered text of the element at `css`, None while it does not exist."""
    try:
        return driver.find_element(By.CSS_SELECTOR, css).text.strip()
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def wait_for(what, timeout, probe):
    """Polls `probe` every 100 ms until it returns a true value; fails after `timeout` s
    with `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise Failure(f"{what}: not seen within {timeout} s (last value: {last!r})")
        time.sleep(0.1)


def number(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def browser(chromium, chromedriver, profile):
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in [
        "--headless=new",
        # Root has no user namespace sandbox to give Chromium.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def run(driver, args):
    backend = f'#groups tr[data-backend="{args.backend}"]'
    other = f'#groups tr[data-backend="{args.other}"]'
    listener = f'#listeners tr[data-listener="{args.listener}"]'
    xdp_acl = f'#xdp tr[data-listener="{args.listener}"] [data-counter="dropped_acl"] .v'
    t = args.timeout

    driver.get(args.url)
    wait_for("a first answer from /status", t,
             lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-last-poll-ok") == "true")
    wait_for(f"backend {args.backend} healthy", t, lambda: text(driver, f"{backend} [data-field=health]") == "healthy")
    # Weights 3 and 1, both healthy: three quarters and one quarter of the traffic.
    wait_for("the backends' shares 75 % and 25 %", t,
             lambda: (text(driver, f"{backend} [data-field=share]"), text(driver, f"{other} [data-field=share]"))
             == ("75 %", "25 %"))
    wait_for(f"listener {args.listener}'s 2xx count above 0", t,
             lambda: (number(text(driver, f"{listener} [data-field='2xx']")) or 0) > 0)
    version = wait_for("the version", t, lambda: text(driver, "#version") not in (None, "", "…") and text(driver, "#version"))
    say(f"READY version={version}")

    expect_line("KILLED", t)
    killed = time.monotonic()
    wait_for(f"backend {args.backend} unhealthy", t,
             lambda: text(driver, f"{backend} [data-field=health]") == "unhealthy")
    took = time.monotonic() - killed
    reason = text(driver, f"{backend} [data-field=reason]") or ""
    wait_for("the surviving backend's share at 100 %", t, lambda: text(driver, f"{other} [data-field=share]") == "100 %")
    say(f"UNHEALTHY after={took:.2f} reason={reason}")

    acl = wait_for("listener's dropped_acl counter", t, lambda: number(text(driver, xdp_acl)) is not None and text(driver, xdp_acl))
    dropped = number(text(driver, f"{listener} [data-field=dropped]"))
    say(f"BASELINE dropped_acl={acl} dropped={dropped}")

    expect_line("CONNECTED", t)
    acl_after = wait_for("dropped_acl rising on the page", t,
                         lambda: (number(text(driver, xdp_acl)) or 0) > int(acl) and number(text(driver, xdp_acl)))
    dropped_after = wait_for("the listener's dropped column rising", t,
                             lambda: (number(text(driver, f"{listener} [data-field=dropped]")) or 0) > (dropped or 0)
                             and number(text(driver, f"{listener} [data-field=dropped]")))
    # The drops sparkline has a point per poll, and its last point is above the floor.
    points = wait_for("a drops sparkline", t, lambda: number(driver.find_element(
        By.CSS_SELECTOR, f"{listener} [data-field=drops-spark]").get_attribute("data-points")))
    say(f"DROPS dropped_acl={acl_after} dropped={dropped_after} spark_points={points}")

    driver.find_element(By.ID, "reload-button").click()
    wait_for("the Reload button's answer", t, lambda: text(driver, "#reload-result") == "reloaded")
    wait_for("one applied reload counted", t, lambda: text(driver, "#reloads-ok") == "1")
    say(f"RELOADED last={text(driver, '#reload-last')}")

    origin = driver.execute_script("return location.origin")
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    foreign = [r for r in resources if not r.startswith(origin + "/")]
    if foreign:
        raise Failure(f"the page loaded resources from elsewhere than {origin}: {foreign}")
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    if errors:
        raise Failure(f"errors in the browser console: {errors}")
    say(f"OK resources={len(resources)} origin={origin}")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="the status page, http://127.0.0.1:PORT/")
    p.add_argument("--backend", required=True, help="the backend the test kills (ADDR:PORT)")
    p.add_argument("--other", required=True, help="the backend that stays up (ADDR:PORT)")
    p.add_argument("--listener", required=True, help="the listener the blacklisted client tries")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds each wait may take")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args()
    # The test's SIGTERM ends the script through `finally`, which quits the browser.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    profile = tempfile.mkdtemp(prefix="edgelb-status-page-")
    driver = None
    try:
        driver = browser(args.chromium, args.chromedriver, profile)
        driver.set_page_load_timeout(args.timeout)
        run(driver, args)
        return 0
    except (Failure, WebDriverException) as e:
        say(f"FAIL {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
        print(f"status_page.py: {e}", file=sys.stderr)
        if driver is not None:
            try:
                print("--- the page as rendered ---", file=sys.stderr)
                print(driver.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
                print("--- browser console ---", file=sys.stderr)
                for entry in driver.get_log("browser"):
                    print(entry, file=sys.stderr)
            except WebDriverException as inner:
                print(f"(the page could not be read: {inner})", file=sys.stderr)
        return 1
    finally:
        if driver is not None:
            try:
                driver.quit()
            except WebDriverException:
                pass
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
