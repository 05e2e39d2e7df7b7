"""The GitHub Pages workflow: linted with actionlint, and it runs the reader's build and deploys its html."""
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def _actionlint() -> str:
    found = Path(sys.executable).with_name("actionlint")
    return str(found) if found.exists() else (shutil.which("actionlint") or "actionlint")


def test_workflows_pass_actionlint():
    assert WORKFLOWS, "expected workflows under .github/workflows"
    done = subprocess.run([_actionlint(), "-no-color", *map(str, WORKFLOWS)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ nope.value }}\n")
    done = subprocess.run([_actionlint(), "-no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "nope" in done.stdout


def test_pages_workflow_publishes_the_readers_build():
    flow = yaml.safe_load((REPO / ".github" / "workflows" / "pages.yml").read_text())
    steps = flow["jobs"]["build"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any("make book" in r and "NO_TRAIN=1" in r for r in runs)          # never trains on the runner
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    deploy = flow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
