"""Package layout for `pip install .`: the checkout's core/ and dashboard/ install as matchlab.core and
matchlab.dashboard, so the distribution's only top-level import name is `matchlab` (a user's own `core`
package is never shadowed). Everything else lives in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPy(build_py):
    """Also ship the dashboard's server settings (.streamlit/config.toml), which `matchlab dashboard` passes
    to Streamlit as flags."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "matchlab" / ".streamlit"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / ".streamlit" / "config.toml", target / "config.toml")


package_dir = {"matchlab": "matchlab"}
for top in ("core", "dashboard"):
    # namespace packages too: dashboard/app_pages/ holds page scripts that st.navigation loads by path
    for name in [top, *(f"{top}.{sub}" for sub in find_namespace_packages(top, exclude=["*__pycache__*"]))]:
        package_dir[f"matchlab.{name}"] = name.replace(".", "/")

setup(packages=list(package_dir), package_dir=package_dir, cmdclass={"build_py": BuildPy})
