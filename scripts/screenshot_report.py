"""Open an agsevnet HTML report in headless Chromium, check that every image loads, and take a screenshot.

    python scripts/screenshot_report.py agsevnet-demo/report.html -o docs/demo_report_screenshot.png

Three checks, each of which fails the script (exit 1) with what is at fault:

1. **Self-contained**: every ``<img>`` of the file has a ``data:image/...;base64`` source that decodes to an
   image Pillow can read (no file or network reference: the report must open offline).
2. **In a real browser**: a temporary copy of the report with a small script added (the report itself needs
   none) is loaded by ``chromium --headless --dump-dom``; after the page's ``load`` event the script writes,
   into the DOM, how many images there are and which are not ``complete`` with ``naturalWidth > 0``.
3. **The interactive viewer** (where the report has one): another copy, with a script in ``<head>`` that records
   every script error and ``console.error``, waits for the first viewer to draw, then toggles the prediction
   and ground-truth overlays, turns the uncertainty map on (where the case has one), moves the opacity slider,
   switches the modality, moves the axial slice slider and switches to the second case, and records whether
   each changed the axial canvas's pixels (a hash of ``getImageData``) and its ``data-slice``; it also points
   at a voxel (the read-out must appear) and clicks it (the coronal view must move to it).

Then the report itself (not the copy) is rendered with ``--screenshot`` at ``--width`` x ``--height`` CSS
pixels: the top of the report (notes, summary, metrics, the first plots), or with ``--viewer`` the first
viewer alone (from a copy that moves it to the top and turns the uncertainty overlay on where there is one).
The PNG is reduced to a 256-colour palette when it exceeds ``--max-kb``. Chromium runs with a new empty
profile in a temporary folder, no sandbox (containers), no GPU, and every background network feature off;
nothing is fetched.
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
VIEWER_MARKER_ID = "agsevnet-viewer-check"
# Runs in <head>, before the report's own script: records every error and console.error, then, once the first
# viewer has drawn its first case, drives its controls and records whether each one changed the pixels.
VIEWER_CHECK_SCRIPT = f"""<script>
(function () {{
  var errors = [];
  window.addEventListener("error", function (ev) {{ errors.push(String(ev.message || ev)); }});
  window.addEventListener("unhandledrejection", function (ev) {{ errors.push("unhandled rejection: " + ev.reason); }});
  var consoleError = console.error;
  console.error = function () {{
    errors.push(Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  }};
  function hash(canvas) {{
    var data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data, h = 2166136261;
    for (var i = 0; i < data.length; i++) {{ h ^= data[i]; h = Math.imul(h, 16777619); }}
    return (h >>> 0).toString(16) + ":" + canvas.width + "x" + canvas.height;
  }}
  function report(result) {{
    result.errors = errors;
    var marker = document.createElement("pre");
    marker.id = "{VIEWER_MARKER_ID}";
    marker.textContent = JSON.stringify(result);
    document.body.appendChild(marker);
  }}
  function fire(el, type) {{ el.dispatchEvent(new Event(type, {{bubbles: true}})); }}
  function when(test, then, tries) {{
    if (test()) return then(true);
    if (tries <= 0) return then(false);
    setTimeout(function () {{ when(test, then, tries - 1); }}, 50);
  }}
  window.addEventListener("load", function () {{
    var roots = document.querySelectorAll(".agv");
    if (!roots.length) return report({{viewers: 0}});
    var root = roots[0];
    when(function () {{ return root.getAttribute("data-ready") === "true"; }}, function (ready) {{
      var result = {{viewers: roots.length, ready: ready, changed: {{}},
                     cases: root.querySelectorAll(".agv-case option").length}};
      if (!ready) return report(result);
      var q = function (cls) {{ return root.querySelector("." + cls); }};
      var axial = root.querySelector('.agv-view[data-view="axial"]');
      var canvas = axial.querySelector("canvas"), slider = axial.querySelector(".agv-slice");
      var before = hash(canvas), slice = canvas.getAttribute("data-slice");
      function changes(name, act, undo) {{
        var h0 = hash(canvas);
        act();
        result.changed[name] = hash(canvas) !== h0;
        if (undo) undo();
      }}
      // Overlays first, on the starting slice (through the tumour centre).
      ["agv-pred", "agv-gt"].forEach(function (cls) {{
        var box = q(cls);
        if (box.disabled) {{ result.changed[cls] = "disabled"; return; }}
        changes(cls, function () {{ box.checked = !box.checked; fire(box, "change"); }},
                function () {{ box.checked = !box.checked; fire(box, "change"); }});
      }});
      var unc = q("agv-unc");
      result.uncertainty = unc.disabled ? "disabled" : "enabled";
      if (!unc.disabled) changes("agv-unc", function () {{ unc.checked = true; fire(unc, "change"); }});
      var opacity = q("agv-opacity");
      changes("agv-opacity", function () {{ opacity.value = "90"; fire(opacity, "input"); }});
      var modality = q("agv-modality");
      result.modalities = modality.options.length;
      if (modality.options.length > 1) changes("agv-modality", function () {{
        modality.selectedIndex = 1; fire(modality, "change"); }});
      var n = parseInt(slider.max, 10), s0 = parseInt(slider.value, 10);
      changes("slider", function () {{ slider.value = String(s0 + 3 <= n ? s0 + 3 : s0 - 3); fire(slider, "input"); }});
      result.slices = [slice, canvas.getAttribute("data-slice")];
      // Pointing at a voxel reads it out; clicking it moves the other views to it.
      var rect = canvas.getBoundingClientRect();
      var at = {{clientX: rect.left + rect.width * 0.5, clientY: rect.top + rect.height * 0.15, bubbles: true}};
      canvas.dispatchEvent(new MouseEvent("mousemove", at));
      result.probe = q("agv-probe").textContent;
      var coronal = root.querySelector('.agv-view[data-view="coronal"] canvas');
      var coronalSlice = coronal.getAttribute("data-slice");
      canvas.dispatchEvent(new MouseEvent("click", at));
      result.clickMoved = coronal.getAttribute("data-slice") !== coronalSlice;
      result.first = before;
      var select = q("agv-case");
      if (select.options.length < 2) return report(result);
      var first = root.getAttribute("data-case");
      select.selectedIndex = 1;
      fire(select, "change");
      when(function () {{ return root.getAttribute("data-case") !== first; }}, function (switched) {{
        result.changed["agv-case"] = switched && hash(canvas) !== before;
        result.second = root.getAttribute("data-case");
        result.uncertaintySecond = q("agv-unc").disabled ? "disabled" : "enabled";
        report(result);
      }}, 100);
    }}, 200);
  }});
}})();
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


def check_viewer(browser: str, document: str, workdir: Path, timeout: float = 90) -> dict:
    """What :data:`VIEWER_CHECK_SCRIPT` finds in a copy of the report: ``viewers`` (how many), ``ready`` (the
    first drew its first case), ``changed`` (control -> whether it changed the axial canvas's pixels, or
    "disabled"), ``uncertainty`` ("enabled"/"disabled" for the first case), ``slices`` (the axial slice before
    and after moving its slider) and ``errors`` (script errors and console.error messages)."""
    copy = workdir / "report_viewer_check.html"
    copy.write_text(document.replace("<head>", "<head>" + VIEWER_CHECK_SCRIPT, 1))
    done = _chromium(browser, workdir / "profile-viewer", "--virtual-time-budget=30000", "--dump-dom",
                     copy.as_uri(), timeout=timeout)
    match = re.search(rf'<pre id="{VIEWER_MARKER_ID}">(.*?)</pre>', done.stdout, re.S)
    if not match:
        tail = (done.stderr or "").strip().splitlines()[-3:]
        raise RuntimeError(f"Chromium did not run the viewer check (exit {done.returncode}): {' | '.join(tail)}")
    return json.loads(html.unescape(match.group(1)))


def viewer_problems(result: dict) -> list[str]:
    """What is wrong in a :func:`check_viewer` result of a report that has a viewer (empty: all good)."""
    if not result.get("viewers"):
        return []
    problems = [f"script error: {e}" for e in result.get("errors", [])]
    if not result.get("ready"):
        return problems + ["the viewer drew nothing"]
    for name, changed in result.get("changed", {}).items():
        if changed is False:
            problems.append(f"{name} did not change the picture")
    if "slider" not in result.get("changed", {}) or result["slices"][0] == result["slices"][1]:
        problems.append("the slice slider did not move the slice")
    if not result.get("probe", "").startswith("voxel "):
        problems.append(f"pointing at a voxel shows {result.get('probe')!r}")
    if result.get("clickMoved") is False:
        problems.append("clicking a voxel did not move the other views")
    return problems


# Shows the first viewer alone at the top of the page (uncertainty on where the case has a map), for --viewer:
# headless Chromium's --screenshot draws the top of the page only, and a scrolled page comes out blank.
SHOW_VIEWER_ONLY = """<script>
window.addEventListener("load", function () {
  var root = document.querySelector(".agv");
  if (!root) return;
  var page = document.createElement("div");
  page.style.cssText = "max-width:1180px;margin:0 auto;padding:.6rem 1rem";
  var heading = document.createElement("h3");
  heading.textContent = document.title + ": interactive viewer";
  page.appendChild(heading);
  page.appendChild(root);
  document.body.insertBefore(page, document.body.firstChild);
  Array.prototype.forEach.call(document.body.children, function (el) {
    if (el !== page && el.tagName !== "SCRIPT" && el.tagName !== "STYLE") el.style.display = "none";
  });
  (function wait(tries) {
    if (root.getAttribute("data-ready") !== "true" && tries > 0) {
      return setTimeout(function () { wait(tries - 1); }, 50);
    }
    var unc = root.querySelector(".agv-unc");
    if (unc && !unc.disabled) { unc.checked = true; unc.dispatchEvent(new Event("change")); }
  })(200);
});
</script>"""


def screenshot(browser: str, report: Path, out: Path, width: int, height: int, workdir: Path,
               timeout: float = 90, viewer: bool = False) -> None:
    """A ``width`` x ``height`` screenshot of the top of ``report`` (with ``viewer``: of its first viewer alone,
    from a copy that shows nothing else) written to ``out``."""
    shot = workdir / "shot.png"
    target = report.resolve()
    if viewer:
        target = workdir / "report_viewer_shot.html"
        target.write_text(report.read_text(encoding="utf-8").replace("</body>", SHOW_VIEWER_ONLY + "</body>", 1))
    done = _chromium(browser, workdir / "profile-shot", "--virtual-time-budget=30000",
                     f"--window-size={width},{height}", f"--screenshot={shot}", target.as_uri(),
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
    parser.add_argument("--viewer", action="store_true",
                        help="screenshot the first interactive viewer (uncertainty shown where present) instead of "
                             "the top of the report")
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
        viewer = check_viewer(browser, document, Path(tmp))
        screenshot(browser, args.report, args.out, args.width, args.height, Path(tmp), viewer=args.viewer)
    viewer_issues = viewer_problems(viewer)
    if args.viewer and not viewer.get("viewers"):
        viewer_issues.append("the report has no interactive viewer to screenshot")
    size = shrink_png(args.out, args.max_kb * 1024)
    print(f"{args.report}: {total} embedded image(s), {len(problems)} undecodable; Chromium loaded {seen - len(broken)}"
          f" of {seen}; {viewer.get('viewers', 0)} viewer(s) checked; screenshot {args.out} ({args.width}x"
          f"{args.height}, {size / 1024:.0f} KB)")
    for problem in problems:
        print(f"  embedded: {problem}", file=sys.stderr)
    for name in broken:
        print(f"  broken in the browser: {name}", file=sys.stderr)
    for issue in viewer_issues:
        print(f"  viewer: {issue}", file=sys.stderr)
    return 1 if problems or broken or viewer_issues or seen != total else 0


if __name__ == "__main__":
    sys.exit(main())
