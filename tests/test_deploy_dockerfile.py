"""The Dockerfile follows the image's rules: multi-stage, a pinned slim Debian base, a
non-root final stage with a health check, no secret in any layer, and a build context
that leaves local state and secrets out (.dockerignore)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex

import pytest
from dockerfile_parse import DockerfileParser

from pipeline.health import role_of
from tests.deploy_util import ROOT

SECRET_WORDS = re.compile(r"KEY|TOKEN|PASSWORD|SECRET", re.IGNORECASE)
SECRET_FILES = re.compile(r"(^|/)(\.env\b|.*\.env$|.*\.pem$|.*\.key$|id_rsa|\.netrc)")
PINNED_BASE = re.compile(
    r"^python:(?P<version>\d+\.\d+\.\d+)-slim-(?P<debian>bookworm|trixie)(@sha256:[0-9a-f]{64})?$"
)


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(ROOT / "Dockerfile"))


def stages(parser: DockerfileParser) -> list[list[dict]]:
    """Instructions grouped by build stage (each FROM opens one)."""
    groups: list[list[dict]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            groups.append([])
        if groups and instruction["instruction"] != "COMMENT":
            groups[-1].append(instruction)
    return groups


def exec_form(value: str) -> list[str]:
    return json.loads(value) if value.lstrip().startswith("[") else shlex.split(value)


def test_image_is_multi_stage_on_a_pinned_slim_debian(dockerfile) -> None:
    assert len(stages(dockerfile)) >= 2
    for image in dockerfile.parent_images:
        match = PINNED_BASE.match(image)
        assert match, f"base {image!r}: pin an exact python:X.Y.Z-slim-<debian> (never latest)"
    final = stages(dockerfile)[-1]
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    assert any(c.startswith("--from=") for c in copies), "final stage copies the build's result"


def test_final_stage_runs_as_a_numeric_non_root_user_with_a_health_check(dockerfile) -> None:
    final = stages(dockerfile)[-1]
    users = [i["value"].split(":")[0] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) != 0
    (healthcheck,) = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    command = exec_form(healthcheck.split("CMD", 1)[1])
    assert command[:3] == ["python", "-m", "pipeline.health"]
    # The check finds the role from the default command (PID 1) without being told.
    (cmd,) = [i["value"] for i in final if i["instruction"] == "CMD"]
    assert role_of(exec_form(cmd)) == "stream-worker"


def test_no_secret_enters_a_layer(dockerfile) -> None:
    for instruction in dockerfile.structure:
        kind, value = instruction["instruction"], instruction["value"]
        if kind in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", " " + value)
            names = names or [value.split("=")[0].split()[0]]
            assert not [n for n in names if SECRET_WORDS.search(n)], f"{kind} {value}"
        if kind in ("COPY", "ADD"):
            sources = [w for w in shlex.split(value) if not w.startswith("--")][:-1]
            assert not [s for s in sources if SECRET_FILES.search(s)], f"{kind} {value}"
            assert "." not in sources, f"{kind} {value}: copy what the build needs, by name"


def test_build_context_leaves_local_state_and_secrets_out() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns
        )

    for path in (".venv", ".local", ".git", ".env", "deploy/.env", "config/prod.env"):
        assert ignored(path), path
    for path in ("setup.cfg", "pyproject.toml", "README.md", "pipeline", "dashboard"):
        assert not ignored(path), path
