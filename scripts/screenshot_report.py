"""Open an agsevnet HTML report in headless Chromium, check that every image loads, and take a screenshot.

    python scripts/screenshot_report.py agsevnet-demo/report.html -o docs/demo_report_screenshot.png

Two checks, each of which fails the script (exit 1) with the images at fault:

1. **Self-contained**: every ``<img>`` of the file has a ``data:image/...;base64`` source that decodes to an
   image Pillow can read (no file or network reference: the report must open offline).
2. **In a real browser**: a temporary copy of the report with a small script added (the report itself needs
   none) is loaded by ``chromium --headless --dump-dom``; after the page's ``load`` event the script writes,
   into the DOM, how many images there are and which are not ``complete`` with ``naturalWidth > 0``.

Then the report itself (not the copy) is rendered with ``--screenshot`` at ``--width`` x ``--height`` CSS
pixels: the top of the report (notes, summary, metrics, the first plots). The PNG is reduced to a 256-colour
palette when it exceeds ``--max-kb``. Chromium runs with a new empty profile in a temporary folder, no sandbox
(containers), no GPU, and every background network feature off; nothing is fetched.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import html
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
MARKER_ID = "agsevnet-image-check"
CHECK_SCRIPT = f"""<script>
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) {{ return !(img.complete && img.naturalWidth > 0); }})
                     .map(function (img) {{ return img.alt || img.src.slice(0, 80); }});
  var marker = document.createElement("pre");
  marker.id = "{MARKER_ID}";
  marker.textContent = JSON.stringify({{total: images.length, broken: broken}});
  document.body.appendChild(marker);
}});
</script>"""
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio",
)


class _Images(HTMLParser):
    """Collects the ``(src, alt)`` of every ``<img>``."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            values = dict(attrs)
            self.images.append((values.get("src") or "", values.get("alt") or ""))


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def check_embedded_images(document: str) -> tuple[int, list[str]]:
    """(number of images, problems): every ``<img>`` must be a base64 data URI that Pillow decodes."""
    from PIL import Image

    parser = _Images()
    parser.feed(document)
    problems = []
    for index, (src, alt) in enumerate(parser.images):
        name = alt or f"image {index + 1}"
        match = re.fullmatch(r"data:image/[\w.+-]+;base64,([A-Za-z0-9+/=\s]*)", src)
        if not match:
            problems.append(f"{name}: not an embedded data URI ({src[:60]!r})")
            continue
        try:
            with Image.open(io.BytesIO(base64.b64decode(match.group(1), validate=False))) as img:
                img.load()
                if img.width == 0 or img.height == 0:
                    problems.append(f"{name}: empty image")
        except (binascii.Error, OSError, ValueError) as exc:
            problems.append(f"{name}: does not decode ({exc})")
    return len(parser.images), problems


def _chromium(browser: str, profile: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def check_in_browser(browser: str, document: str, workdir: Path, timeout: float = 90) -> tuple[int, list[str]]:
    """(number of images, the broken ones) as Chromium sees them after loading a copy of the report."""
    copy = workdir / "report_check.html"
    copy.write_text(document.replace("</body>", CHECK_SCRIPT + "\n</body>", 1) if "</body>" in document
                    else document + CHECK_SCRIPT)
    done = _chromium(browser, workdir / "profile-check", "--virtual-time-budget=10000", "--dump-dom",
                     copy.as_uri(), timeout=timeout)
    match = re.search(rf'<pre id="{MARKER_ID}">(.*?)</pre>', done.stdout, re.S)
    if not match:
        tail = (done.stderr or "").strip().splitlines()[-3:]
        raise RuntimeError(f"Chromium did not run the image check (exit {done.returncode}): {' | '.join(tail)}")
    result = json.loads(html.unescape(match.group(1)))
    return int(result["total"]), list(result["broken"])


def screenshot(browser: str, report: Path, out: Path, width: int, height: int, workdir: Path,
               timeout: float = 90) -> None:
    """A ``width`` x ``height`` screenshot of the top of ``report`` written to ``out``."""
    shot = workdir / "shot.png"
    done = _chromium(browser, workdir / "profile-shot", "--virtual-time-budget=10000",
                     f"--window-size={width},{height}", f"--screenshot={shot}", report.resolve().as_uri(),
                     timeout=timeout)
    if not shot.is_file():
        tail = (done.stderr or "").strip().splitlines()[-3:]
        raise RuntimeError(f"Chromium wrote no screenshot (exit {done.returncode}): {' | '.join(tail)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(shot), out)


def shrink_png(path: Path, max_bytes: int) -> int:
    """Reduce ``path`` to a 256-colour palette PNG when it is larger than ``max_bytes``; its final size."""
    from PIL import Image

    if path.stat().st_size > max_bytes:
        with Image.open(path) as img:
            small = img.convert("RGB").quantize(256)
        small.save(path, format="PNG", optimize=True)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the HTML report")
    parser.add_argument("-o", "--out", type=Path, required=True, help="PNG screenshot to write")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels (default 1280)")
    parser.add_argument("--height", type=int, default=1800, help="window height in CSS pixels (default 1800)")
    parser.add_argument("--max-kb", type=int, default=600, help="palette-reduce the PNG above this size (default 600)")
    parser.add_argument("--browser", help="Chromium executable (default: chromium on PATH)")
    args = parser.parse_args(argv)

    if not args.report.is_file():
        print(f"error: {args.report}: not found", file=sys.stderr)
        return 1
    browser = args.browser or find_chromium()
    if not browser:
        print("error: no Chromium found on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 1
    document = args.report.read_text(encoding="utf-8")
    total, problems = check_embedded_images(document)
    with tempfile.TemporaryDirectory(prefix="agsevnet-shot-") as tmp:
        seen, broken = check_in_browser(browser, document, Path(tmp))
        screenshot(browser, args.report, args.out, args.width, args.height, Path(tmp))
    size = shrink_png(args.out, args.max_kb * 1024)
    print(f"{args.report}: {total} embedded image(s), {len(problems)} undecodable; Chromium loaded {seen - len(broken)}"
          f" of {seen}; screenshot {args.out} ({args.width}x{args.height}, {size / 1024:.0f} KB)")
    for problem in problems:
        print(f"  embedded: {problem}", file=sys.stderr)
    for name in broken:
        print(f"  broken in the browser: {name}", file=sys.stderr)
    return 1 if problems or broken or seen != total else 0


if __name__ == "__main__":
    sys.exit(main())
