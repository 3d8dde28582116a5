"""Drive the demo page in headless Chromium (Selenium, Debian's chromium and chromedriver).

The browser test uses these helpers; run as a script it takes the screenshot shown in README:

    python tests/demo_browser.py --adapter outputs/train_weather/adapter --input rainy.png \\
        --reference clean.png --screenshot docs/images/demo.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

INSTALL_HINT = "install Chromium and its driver: apt-get install chromium chromium-driver (.ci/run does)"


def browser_programs() -> tuple[str, str]:
    """The paths of chromium and chromedriver; a clear error if either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        raise RuntimeError(f"the browser test needs chromium and chromedriver on PATH: {INSTALL_HINT}")
    return chromium, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_demo(adapter: str, *options: str, timeout: float = 180.0):
    """``restoregrad demo --adapter ADAPTER`` in a process of its own; yields the page's URL."""
    port = free_port()
    command = [sys.executable, "-m", "restoregrad_adapter.cli", "demo", "--adapter", adapter, "--port", str(port),
               *options]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"restoregrad demo exited with status {server.returncode}:\n{server.stdout.read()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"restoregrad demo did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.5)
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A headless Chromium session (Selenium's WebDriver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = browser_programs()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, css: str, timeout: float = 180.0):
    """The first element matching ``css``, once the page shows one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))
    return driver.find_element(By.CSS_SELECTOR, css)


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait_for(driver, "#upload input[type=file]", timeout=60)


UPLOADED = "{0} .file-preview, {0} table, {0} audio"  # what a File or Audio component shows once it holds a file


def upload_and_restore(driver, upload: Path, reference: Path | None = None, timeout: float = 300.0) -> str:
    """Upload ``upload`` (and ``reference``), press Restore, wait for the restoration; the URL of the restored
    image the page shows, or of the restored recording it offers for download."""
    from selenium.webdriver.common.by import By

    wait_for(driver, "#upload input[type=file]").send_keys(str(Path(upload).resolve()))
    wait_for(driver, UPLOADED.format("#upload"))  # the upload has reached the server
    if reference is not None:
        wait_for(driver, "#reference input[type=file]").send_keys(str(Path(reference).resolve()))
        wait_for(driver, UPLOADED.format("#reference"))
    wait_for(driver, "#restore").click()
    wait_for(driver, "#prior img", timeout)  # the last picture the restoration fills in
    if driver.find_elements(By.CSS_SELECTOR, "#restored img"):
        return wait_for(driver, "#restored img").get_attribute("src")  # the image shown
    return wait_for(driver, "#download a[href]").get_attribute("href")  # the recording offered for download


def error_toast(driver, timeout: float = 120.0) -> str:
    """The text of the error message the page shows."""
    return wait_for(driver, ".toast-body", timeout).text


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--screenshot", required=True, type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1150)
    args = parser.parse_args(argv)
    with served_demo(args.adapter) as (url, _), chromium(args.width, args.height) as driver:
        open_page(driver, url)
        upload_and_restore(driver, args.input, args.reference)
        time.sleep(2)  # let the images finish drawing
        print(wait_for(driver, "#report").text)
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        partial = args.screenshot.with_name(args.screenshot.name + ".partial.png")
        driver.save_screenshot(str(partial))
        partial.replace(args.screenshot)
    print(f"wrote {args.screenshot}")


if __name__ == "__main__":
    main()
