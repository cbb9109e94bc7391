"""report.html in a real headless browser (Debian's chromium, installed by `make tools`): every image decodes.

A copy of the page gets a script that, once the page has loaded, writes each <img>'s decoded size into
the DOM; chromium dumps the DOM and the test compares those sizes with the images' own (read by PIL).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make tools installs Debian's)")

PROBE = """<script>
window.addEventListener('load', () => {
  const sizes = Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);
  const out = document.createElement('pre');
  out.id = 'image-check';
  out.textContent = JSON.stringify(sizes);
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str, timeout: float = 120) -> str:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow  # a real browser: an integration check for `make test`
def test_every_image_of_the_report_decodes_in_chromium(tmp_path, reported_run):
    written = reported_run.written
    page = tmp_path / "probe.html"
    page.write_text(written.html.replace("</body>", PROBE + "</body>"))
    # a profile of its own, not ~/.config/chromium: nothing shared with another chromium there (a user's browser,
    # or this test in another session running at the same time)
    dom = chromium(
        f"--user-data-dir={tmp_path / 'profile'}",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    )
    found = re.search(r"<pre id=\"image-check\">(.*?)</pre>", dom, re.S)
    assert found, "the probe did not run: " + dom[-500:]
    decoded = {alt: (complete, width, height) for alt, complete, width, height in json.loads(html.unescape(found[1]))}
    expected = {
        alt: Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size
        for alt, src in re.findall(r"<img [^>]*alt='([^']*)' src='([^']*)'", written.html)
    }
    assert len(decoded) == len(expected) == 7
    for alt, size in expected.items():
        complete, width, height = decoded[alt]
        assert complete and (width, height) == size, f"{alt}: chromium decoded {width}x{height}, expected {size}"
