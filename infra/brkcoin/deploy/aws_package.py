"""Lambda deployment packages: a function folder, the adapter, and (optionally) its deps.

The zip's root is the folder itself (main.py, requirements.txt, static files)
plus infra/aws/brkcoin_lambda.py; vendored dependencies, when asked for, are
installed with `pip install --target` for the Lambda platform and cached under
.brkcoin/aws/deps/ by the hash of what they were built from.

botocore, which the worker's UPSTREAM_AUTH=aws-sigv4 (and the web UI's signed
probes) import, is not vendored and not in any requirements.txt: the Lambda Python
runtime ships it, and no other target uses that mode.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Final

from brkcoin.deploy.common import AWS_DIR, DeployError
from brkcoin.layout import ROOT

ADAPTER = AWS_DIR / "brkcoin_lambda.py"
ADAPTER_REQUIREMENTS = AWS_DIR / "requirements.txt"
HANDLER = "brkcoin_lambda.handler"
RUNTIME: Final = "python3.12"
PLATFORM = "manylinux2014_x86_64"  # Lambda's x86_64 architecture
CACHE = ROOT / ".brkcoin" / "aws" / "deps"
SKIPPED = {"__pycache__", ".pytest_cache"}
# A fixed timestamp: the same files give the same zip, so CodeSha256 shows real changes.
EPOCH = (1980, 1, 1, 0, 0, 0)


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not SKIPPED & set(p.relative_to(folder).parts) and p.suffix != ".pyc"
    )


def _add(archive: zipfile.ZipFile, path: Path, name: str) -> None:
    info = zipfile.ZipInfo(name, EPOCH)
    info.external_attr = 0o644 << 16  # readable by Lambda's sandbox user
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, path.read_bytes())


def requirement_files(folder: Path) -> list[Path]:
    own = folder / "requirements.txt"
    if not own.is_file():
        raise DeployError(f"{folder.relative_to(ROOT)} has no requirements.txt")
    return [own, ADAPTER_REQUIREMENTS]


def pip_command(folder: Path, target: Path) -> list[str]:
    """pip install of the folder's requirements and the adapter's, as wheels for Lambda."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
               "--platform", PLATFORM, "--implementation", "cp",
               "--python-version", RUNTIME.removeprefix("python"), "--only-binary=:all:"]
    for requirements in requirement_files(folder):
        command += ["-r", str(requirements)]
    return command


def vendored(folder: Path) -> Path:
    """A directory of the folder's dependencies built for Lambda (cached)."""
    digest = hashlib.sha256(PLATFORM.encode() + RUNTIME.encode())
    for requirements in requirement_files(folder):
        digest.update(requirements.read_bytes())
    target = CACHE / digest.hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    print(f"vendoring the dependencies of {folder.name} into {target.relative_to(ROOT)}")
    result = subprocess.run(pip_command(folder, target), check=False)
    if result.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise DeployError(f"pip could not build the Lambda dependencies of {folder.name} "
                          "(is PyPI reachable?); or deploy with --no-vendor and a --layer")
    (target / ".complete").touch()
    return target


def build_zip(folder: Path, dependencies: Path | None = None) -> bytes:
    """The deployment package of one function folder, as bytes for CreateFunction."""
    if not (folder / "main.py").is_file():
        raise DeployError(f"{folder.relative_to(ROOT)}/main.py does not exist")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if dependencies is not None:
            for path in _files(dependencies):
                if path.name != ".complete":
                    _add(archive, path, path.relative_to(dependencies).as_posix())
        for path in _files(folder):
            _add(archive, path, path.relative_to(folder).as_posix())
        _add(archive, ADAPTER, ADAPTER.name)
    return buffer.getvalue()
