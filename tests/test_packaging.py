"""A non-editable install ships every package and every committed weight file (setup.py)."""

import fnmatch
import os
import runpy

import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_kwargs(monkeypatch) -> dict:
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.setenv("CLOCKWORK_BUILD_EXT", "0")  # the layout only: no extension build
    monkeypatch.chdir(ROOT)
    runpy.run_path(os.path.join(ROOT, "setup.py"))
    return captured


def test_every_package_is_installed(monkeypatch):
    packages = set(setup_kwargs(monkeypatch)["packages"])
    on_disk = {os.path.relpath(d, ROOT).replace(os.sep, ".")
               for d, _, files in os.walk(os.path.join(ROOT, "clockwork_engine")) if "__init__.py" in files}
    assert on_disk <= packages, f"not installed: {sorted(on_disk - packages)}"
    assert "clockwork_engine.kernels" in packages


def test_every_weight_file_is_package_data(monkeypatch):
    data = setup_kwargs(monkeypatch)["package_data"]
    for package, patterns in data.items():
        base = os.path.join(ROOT, *package.split("."))
        folders = [f for f in os.listdir(base) if f.startswith("weights")]  # weights/, the demo's weights_sd3/
        files = [os.path.relpath(os.path.join(d, f), base).replace(os.sep, "/")
                 for folder in folders for d, _, fs in os.walk(os.path.join(base, folder)) for f in fs]
        assert files, f"{package} has no weights/"
        missing = [f for f in files if f.endswith((".json", ".safetensors"))
                   and not any(fnmatch.fnmatchcase(f, p) and f.count("/") == p.count("/") for p in patterns)]
        assert not missing, f"{package}: not shipped: {missing}"
