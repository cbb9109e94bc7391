"""A local run's steps are cached under their stage's content tag, so a step whose code changed runs again."""

import json
import os
import subprocess
import sys
from pathlib import Path

from clipdpo.cluster.imagetags import stage_tag

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, os
from pipelines.run import local_content_tags
local_content_tags()
from pipelines.settings import SETTINGS
print(json.dumps({"tags": os.environ.get("CLIPDPO_IMAGE_TAGS"), "filter": SETTINGS.image("filter")}))
"""


def _probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "CLIPDPO_IMAGE_TAGS"} | env
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    out = subprocess.run([sys.executable, "-c", PROBE], env=environ, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_local_steps_run_the_stage_content_tags():
    probe = _probe(CLIPDPO_IMAGE_TAG="0.1.0")
    tag = stage_tag(str(ROOT), "filter")
    assert json.loads(probe["tags"])["filter"] == tag and tag != "0.1.0"
    assert probe["filter"].endswith(f"/clipdpo-filter:{tag}")


def test_tags_the_user_set_are_kept():
    chosen = json.dumps({"filter": "9.9.9-mine"})
    probe = _probe(CLIPDPO_IMAGE_TAGS=chosen)
    assert probe["tags"] == chosen and probe["filter"].endswith("/clipdpo-filter:9.9.9-mine")


def test_a_process_that_imported_the_settings_first_keeps_its_tags():
    """A test running pipelines in one process imports the settings first: the tags stay as they are."""
    late = "import os, json\nimport pipelines.settings\n" + PROBE.split("import json, os\n", 1)[1]
    environ = {k: v for k, v in os.environ.items() if k != "CLIPDPO_IMAGE_TAGS"} | {"CLIPDPO_IMAGE_TAG": "0.1.0"}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    out = subprocess.run([sys.executable, "-c", late], env=environ, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["tags"] is None and probe["filter"].endswith("/clipdpo-filter:0.1.0")
