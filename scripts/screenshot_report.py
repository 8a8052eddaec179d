"""Screenshots of a run's report.html in Debian's chromium (Playwright), for docs/img.

    .venv/bin/python scripts/screenshot_report.py runs/demo/report.html docs/img/demo_report
writes demo_report_top.png (the first screen) and demo_report_full.png (the whole page, 1200 px wide).
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main(report: str, stem: str) -> None:
    out = Path(stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(Path(report).resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=f"{stem}_top.png")
        page.screenshot(path=f"{stem}_full.png", full_page=True)
        browser.close()
    print(f"wrote {stem}_top.png and {stem}_full.png")


if __name__ == "__main__":
    main(*sys.argv[1:3])
