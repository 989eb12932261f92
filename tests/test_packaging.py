from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path


def test_callbacks_folder_is_cvit_callbacks_and_no_top_level_callbacks(tmp_path):
    import cvit.callbacks

    import cvit

    # one source tree: both under the folder holding the package (the repository in an editable install,
    # site-packages in a wheel's), never an installed copy of one beside the working tree's other
    assert Path(cvit.callbacks.__file__).resolve().is_relative_to(Path(cvit.__file__).resolve().parents[1])
    assert Path(cvit.callbacks.__file__).resolve().parent.name == "callbacks"
    # from a neutral directory (not the repository root), no top-level `callbacks` is importable
    code = "import importlib.util, cvit.callbacks; print(importlib.util.find_spec('callbacks') is None)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert importlib.util.find_spec("cvit.callbacks.replay") is not None


def test_every_package_folder_is_installed():
    repo = Path(__file__).resolve().parents[1]
    block = re.search(r"^packages = \[(.*?)\]", (repo / "pyproject.toml").read_text(), re.S | re.M)
    listed = set(re.findall(r'"([^"]+)"', block.group(1)))  # (tomllib needs Python 3.11; the kit runs on 3.10)
    folders = {".".join(init.parent.relative_to(repo).parts) for init in (repo / "cvit").rglob("__init__.py")}
    assert folders | {"cvit.callbacks"} == listed, "list every package folder in pyproject.toml"
