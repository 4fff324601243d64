"""The release wheel (`make wheel`; `make wheel-test` runs the suite against it installed in a
fresh venv with no Rust): its tag is manylinux2014 (glibc 2.17) with no external libraries,
and the package under test is the installed one."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

import ferrobatch

WHEEL = os.environ.get("FERROBATCH_WHEEL")
needs_wheel = pytest.mark.skipif(
    not WHEEL, reason="no wheel under test: `make wheel-test` builds one and sets FERROBATCH_WHEEL"
)


@needs_wheel
def test_the_wheel_is_abi3_manylinux2014_with_no_external_libraries() -> None:
    assert WHEEL is not None
    name = Path(WHEEL).name
    assert "-cp39-abi3-" in name and "manylinux2014_x86_64" in name, name
    auditwheel = shutil.which("auditwheel")
    assert auditwheel is not None, "make wheel-test installs auditwheel beside the wheel"
    out = subprocess.run(
        [auditwheel, "show", WHEEL], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(out.split())
    assert 'consistent with the following platform tag: "manylinux_2_17_x86_64"' in flat, out
    # Only the system's own glibc libraries are referenced; nothing would have to be grafted.
    assert "requires the following external shared libraries" not in flat, out
    with zipfile.ZipFile(WHEEL) as z:
        names = z.namelist()
    assert "ferrobatch/_native.abi3.so" in names
    assert "ferrobatch/py.typed" in names and "ferrobatch/_native.pyi" in names


@needs_wheel
def test_the_package_under_test_is_the_installed_wheel() -> None:
    assert "site-packages" in ferrobatch.__file__, ferrobatch.__file__
    assert shutil.which("cargo") is None and shutil.which("rustc") is None
