"""The Dockerfile builds what docs/deploy.md promises, from the locks in requirements/.

No container engine is needed: the Dockerfile is parsed (continuations joined, stages followed
through their FROM chain) and the locks are read as pip reads them. Building the image itself is
`docker build .` (docs/deploy.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = (ROOT / "pyproject.toml").read_text()
LOCKS = ROOT / "requirements"
UID = "10001"

Instruction = tuple[str, str]  # (KEYWORD, arguments)


def instructions(text: str | None = None) -> list[Instruction]:
    """The Dockerfile's instructions, comments dropped and `\\` continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in (text if text is not None else DOCKERFILE.read_text()).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        lines.append(pending + line)
        pending = ""
    out = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def dockerfile_stages() -> dict[str, list[Instruction]]:
    """Stage name -> its instructions, the FROM first, in file order."""
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for keyword, args in instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match and match.group(2), f"every stage is named: FROM {args}"
            current = stages[match.group(2)] = [(keyword, match.group(1))]
        elif current is not None:
            current.append((keyword, args))
    return stages


def chain(target: str) -> list[Instruction]:
    """Everything that applies to `target`: its FROM chain's instructions, base stage first."""
    stages = dockerfile_stages()
    own = stages[target]
    parent = own[0][1]
    return (chain(parent) if parent in stages else [own[0]]) + own[1:]


def stage_user(target: str) -> str | None:
    users = [args for keyword, args in chain(target) if keyword == "USER"]
    return users[-1] if users else None


def last(target: str, keyword: str) -> str | None:
    values = [args for k, args in chain(target) if k == keyword]
    return values[-1] if values else None


def test_the_parser_reads_this_dockerfile() -> None:
    # Guards the helpers: a continuation is one instruction, comments are nothing.
    parsed = instructions("FROM a AS b\n# RUN no\nRUN x \\\n    && y\n")
    assert parsed == [("FROM", "a AS b"), ("RUN", "x && y")]
    assert len(dockerfile_stages()) >= 4


def test_multi_stage_on_python_slim_with_the_mirror_as_default_target() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "mirror", "the default target (the last stage) is the mirror"
    assert {"mirror", "smoke"} <= set(stages)
    base = chain("mirror")[0][1]
    argument = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base == "${PYTHON_IMAGE}" and argument and argument.group(1).startswith("python:3.11-slim")
    # Build tools stay in the build stages: the runtime images copy only the finished venv.
    for target in ("mirror", "smoke"):
        runs = " ".join(args for k, args in chain(target) if k == "RUN")
        assert "pip install" not in runs and "pip wheel" not in runs, target
        copies = [args for k, args in dockerfile_stages()[target] if k == "COPY"]
        assert any(a.startswith("--from=") and a.endswith("/opt/venv /opt/venv") for a in copies), target


@pytest.mark.parametrize("target", ["mirror", "smoke"])
def test_runs_as_a_fixed_non_root_user(target: str) -> None:
    assert stage_user(target) == f"{UID}:{UID}"
    created = " ".join(args for k, args in chain(target) if k == "RUN")
    assert f"--uid {UID}" in created and f"--gid {UID}" in created


def test_the_mirror_stage_promises() -> None:
    assert last("mirror", "STOPSIGNAL") == "SIGTERM"
    assert last("mirror", "VOLUME") == "/cache"
    assert last("mirror", "EXPOSE") == "8090"
    assert json.loads(last("mirror", "ENTRYPOINT") or "null") == ["hub-mirror"]
    cmd = json.loads(last("mirror", "CMD") or "null")
    assert cmd == ["serve", "--host", "0.0.0.0", "--port", "8090", "--cache-dir", "/cache"]
    env = " ".join(args for k, args in chain("mirror") if k == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "PATH=/opt/venv/bin:$PATH" in env
    # /cache exists owned by the user, so a new named volume is writable by it.
    assert f"install -d -o {UID} -g {UID}" in " ".join(args for k, args in chain("mirror") if k == "RUN")


def test_healthcheck_asks_healthz_on_the_served_port_without_curl() -> None:
    check = last("mirror", "HEALTHCHECK") or ""
    options, _, command = check.partition("CMD ")
    assert re.search(r"--interval=\S+", options) and re.search(r"--timeout=\S+", options)
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"] and "curl" not in check
    assert "urllib.request.urlopen('http://127.0.0.1:8090/healthz'" in argv[2]
    compile(argv[2], "HEALTHCHECK", "exec")  # the probe is valid Python
    assert last("smoke", "HEALTHCHECK") is None, "the worker serves no /healthz; compose checks its metrics"


def test_oci_labels() -> None:
    labels = " ".join(args for k, args in chain("mirror") if k == "LABEL")
    found = dict(re.findall(r"org\.opencontainers\.image\.([a-z.]+)=\"([^\"]*)\"", labels))
    for key in ("title", "description", "version", "revision", "created", "source", "licenses", "base.name"):
        assert found.get(key), f"no org.opencontainers.image.{key} label"
    assert found["licenses"] == re.search(r'^license = "([^"]+)"', PYPROJECT, re.M).group(1)
    version = re.search(r'^version = "([^"]+)"', PYPROJECT, re.M).group(1)
    assert f"ARG VERSION={version}" in DOCKERFILE.read_text()


@pytest.mark.parametrize(("venv_stage", "lock"), [("mirror-venv", "mirror.lock"), ("smoke-venv", "smoke.lock")])
def test_dependencies_come_from_the_lock_with_hashes_and_the_project_without_deps(venv_stage: str, lock: str) -> None:
    stage = dockerfile_stages()[venv_stage]
    copies = [args for k, args in stage if k == "COPY"]
    assert f"requirements/{lock} /tmp/requirements.lock" in copies
    runs = [args for k, args in stage if k == "RUN"]
    assert any("pip install --require-hashes -r /tmp/requirements.lock" in r for r in runs)
    assert any("pip install --no-deps /wheels/" in r for r in runs)


def test_no_pip_install_escapes_the_locks() -> None:
    # Each install is either hash-checked or --no-deps (our own wheel); the build backend is locked too.
    runs = [args for k, args in instructions() if k == "RUN"]
    installs = [part for r in runs for part in r.split("&&") if "pip install" in part or "pip wheel" in part]
    assert installs
    for command in installs:
        assert "--require-hashes" in command or "--no-deps" in command, command
        if "pip wheel" in command:
            assert "--no-build-isolation" in command, "an isolated build would fetch an unlocked setuptools"


# --- The locks. ------------------------------------------------------------------------------------------


def read_lock(name: str) -> dict[str, tuple[Version, list[str]]]:
    """Canonical name -> (pinned version, hashes), as pip --require-hashes reads the file."""
    text = (LOCKS / name).read_text()
    entries: dict[str, tuple[Version, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2] if text.startswith("#") else text):
        block = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#"))
        if not block.strip():
            continue
        requirement = Requirement(block.split("\\")[0].strip())
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{name}: {requirement} is not pinned"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        entries[canonicalize_name(requirement.name)] = (Version(spec.version), hashes)
    return entries


def project_requirements(extra: str | None = None) -> list[Requirement]:
    block = "dependencies" if extra is None else extra
    match = re.search(rf"^{block} = \[\n(.*?)^\]", PYPROJECT, re.M | re.S)
    assert match, f"no {block} list in pyproject.toml"
    items = yaml.safe_load("[" + re.sub(r"#.*", "", match.group(1)) + "]")
    return [Requirement(item) for item in items]


@pytest.mark.parametrize("lock", ["build.lock", "mirror.lock", "smoke.lock"])
def test_every_locked_package_is_pinned_with_hashes(lock: str) -> None:
    entries = read_lock(lock)
    assert entries
    for name, (_, hashes) in entries.items():
        assert hashes, f"{lock}: {name} has no --hash"
    header = (LOCKS / lock).read_text().splitlines()[1]
    assert "uv pip compile" in header and "--generate-hashes" in header and f"-o requirements/{lock}" in header


@pytest.mark.parametrize(("lock", "extras"), [("mirror.lock", []), ("smoke.lock", ["smoke"])])
def test_the_lock_pins_every_runtime_dependency_of_pyproject(lock: str, extras: list[str]) -> None:
    entries = read_lock(lock)
    wanted = project_requirements() + [r for extra in extras for r in project_requirements(extra)]
    assert len(wanted) >= 7
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{lock} does not pin {requirement.name}: regenerate it (docs/deploy.md)"
        version = entries[name][0]
        assert requirement.specifier.contains(version, prereleases=True), f"{lock}: {name}=={version} vs {requirement}"
    # The smoke lock is the mirror's plus the extra: the worker image runs the same mirror code paths.
    if extras:
        assert set(read_lock("mirror.lock")) <= set(entries)


def test_the_build_lock_satisfies_the_build_system() -> None:
    requires = re.search(r'^requires = \["([^"]+)"\]', PYPROJECT, re.M).group(1)
    requirement = Requirement(requires)
    version = read_lock("build.lock")[canonicalize_name(requirement.name)][0]
    assert requirement.specifier.contains(version)


def test_the_smoke_lock_carries_the_torch_the_tests_run_with() -> None:
    constraints = dict(
        line.split("==") for line in (LOCKS / "smoke-constraints.txt").read_text().splitlines() if "==" in line
    )
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    entries = read_lock("smoke.lock")
    for name, version in constraints.items():
        assert f'"{name}=={version}"' in test_sh, f"scripts/test.sh installs another {name}"
        assert entries[name][0] == Version(version)


# --- The build context. -----------------------------------------------------------------------------


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching pattern wins)."""
    result = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        parts = path.split("/")
        # A pattern matching a directory matches everything under it.
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            result = not negate
    return result


def test_the_build_context_is_small_and_holds_what_the_dockerfile_copies() -> None:
    for path in (".env", ".venv/bin/python", ".git/HEAD", "tests/test_image.py", "testbed/hubemu/__init__.py",
                 "hub-mirror-cache/objects/x", "build/lib/mirror/app.py", "mirror/__pycache__/app.cpython-311.pyc",
                 "docs/deploy.md", ".pytest_cache/v/x"):  # fmt: skip
        assert ignored(path), f"{path} would be sent to the daemon"
    copied = [args for k, args in instructions() if k == "COPY" and not args.startswith("--from=")]
    sources = [source for args in copied for source in args.split()[:-1]]
    assert sources
    for source in sources:
        sample = f"{source}/app.py" if (ROOT / source).is_dir() else source
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not ignored(sample), f"COPY {source}, but .dockerignore leaves it out"
