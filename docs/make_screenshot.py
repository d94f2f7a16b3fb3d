"""Regenerate docs/report.png, the README's screenshot of the report.

    dse search digits --out runs/digits        # once (a few minutes on CPU)
    python docs/make_screenshot.py runs/digits  # writes the report, opens it in headless Chromium,
                                                # clicks the best front point within 1 pp, saves the PNG

Uses Debian's chromium (/usr/bin/chromium, or --chromium PATH) through Playwright; never downloads a browser.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, nargs="?", default=Path("runs/digits"))
    parser.add_argument("-o", "--out", type=Path, default=Path(__file__).resolve().parent / "report.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1500)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from dse.report.html import CHROMIUM_ARGS, write_report

    page_path, _ = write_report(args.run_dir)
    html = page_path.read_text()
    start = html.index('id="dse-data">') + len('id="dse-data">')
    data = json.loads(html[start : html.index("</script>", start)])
    q = data["quant_accuracy"]
    front = [i for i, p in enumerate(data["points"]) if p["on_front"]]
    within = [i for i in front if q is None or data["points"][i]["accuracy"] >= q - 0.01 - 1e-12]
    pick = min(within or front, key=lambda i: data["points"][i]["energy_rel"])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": 1000}, device_scale_factor=1)
        page.goto(page_path.resolve().as_uri())
        page.wait_for_selector("#pareto .scatterlayer .point")
        page.evaluate(f"window.dseShowPoint({pick})")
        page.wait_for_selector("#panel h3")
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"{args.out}  (report {page_path}, point {pick}: trial {data['points'][pick]['trial']})")


if __name__ == "__main__":
    main()
