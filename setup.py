"""Build hook: ship the repo's top-level ``sql/`` questions inside the wheel as
``xner_ray/_sql`` (the layout keeps them at the repo root; ``xner sql`` finds either)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithSql(build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "sql"
        if src.is_dir():  # an sdist carries it (MANIFEST.in)
            shutil.copytree(src, Path(self.build_lib) / "xner_ray" / "_sql", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithSql})
