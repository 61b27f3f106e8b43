"""Render a tuning report in headless Chromium and save a screenshot (checks report.html renders offline).

    python benchmarks/report_screenshot.py DIR [--out benchmarks/results/report_screenshot.png]

DIR is a folder written by `hotexperts tune`. Needs Debian's chromium (`apt-get install chromium`).
The page is opened from disk with networking disabled, so it must be self-contained. Writes the PNG
and a JSON summary (page size, image count, chromium version) beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "report_screenshot.png"))
    args = ap.parse_args()
    page = Path(args.dir) / "report.html"
    if not page.exists():
        print(f"{page}: not found", file=sys.stderr)
        return 1
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        print("no chromium found: apt-get install chromium", file=sys.stderr)
        return 1
    html = page.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as prof:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={prof}", "--window-size=1200,3000", "--hide-scrollbars",
               f"--screenshot={Path(args.out).resolve()}", page.resolve().as_uri()]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    ok = r.returncode == 0 and Path(args.out).exists() and Path(args.out).stat().st_size > 10_000
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    summary = {"page": str(page), "page_bytes": len(html.encode()), "embedded_images": html.count("data:image/png;base64,"),
               "external_refs": html.count("http://") + html.count("https://"), "chromium": version,
               "screenshot": args.out, "ok": ok}
    Path(args.out).with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
