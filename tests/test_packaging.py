"""The wheel built from a clean checkout holds every package, module and asset of the tree.

Remapped folders defeat setuptools' auto-discovery, and an editable install imports a package
that the wheel would miss; so build a real wheel from the tracked files and compare.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _tracked_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def folder_of(package: str, mapping: dict[str, str]) -> Path:
    """Where setuptools looks for ``package``: its nearest mapped ancestor's folder, then the
    rest of its dotted name as subfolders."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in mapping:
            return Path(mapping[head], *parts[cut:])
    raise AssertionError(f"{package} has no folder in package-dir")


def test_wheel_from_clean_checkout_contains_every_module(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    _tracked_tree(tree)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(tmp_path / "dist"), str(tree)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("trainvitals-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    setuptools = _setuptools()
    expected = set()
    for package in setuptools["packages"]:
        prefix = package.replace(".", "/")
        for path in (tree / folder_of(package, setuptools["package-dir"])).iterdir():
            if path.suffix in (".py", ".js", ".html", ".css", ".json") or path.name == "py.typed":
                expected.add(f"{prefix}/{path.name}")
    missing = expected - names
    assert not missing, f"wheel lacks {sorted(missing)}"


def test_every_package_folder_is_listed() -> None:
    setuptools = _setuptools()
    listed = {folder_of(p, setuptools["package-dir"]) for p in setuptools["packages"]}
    on_disk = {p.parent.relative_to(ROOT) for p in ROOT.glob("*/**/__init__.py")
               if not p.is_relative_to(ROOT / ".venv") and not p.is_relative_to(ROOT / "build")
               and not p.is_relative_to(ROOT / "tests")}
    assert on_disk <= listed, f"packages missing from pyproject: {sorted(on_disk - listed)}"
    assert all((ROOT / folder / "__init__.py").is_file() for folder in listed)
