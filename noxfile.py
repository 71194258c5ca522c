"""Sessions: tests (everything together), tests-<package> (one package alone), lint, bench, demo (the quickstart)."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.sessions = ["tests"]

PACKAGES = ["formats", "datagen", "trainer", "judge", "serve", "pipeline"]
LOCAL_DEPS = {"pipeline": ["datagen", "trainer", "judge", "serve"]}  # Huarizo packages a package needs, not on PyPI
TORCH_FREE = {"datagen", "judge"}  # their sessions install no torch, which shows that they need none
NO_TORCH = "import importlib.util, sys; sys.exit('torch is installed' if importlib.util.find_spec('torch') else 0)"
TORCH = "torch==2.13.0"  # a local CPU wheel; an unpinned torch pulls a multi-GB CUDA build
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}


def _install_all(session: nox.Session, extras: str | None = "test") -> None:
    session.install(TORCH)
    session.install(*[f"./packages/{p}" + (f"[{extras}]" if extras else "") for p in PACKAGES])


@nox.session
def tests(session: nox.Session) -> None:
    """All packages installed together; pytest over every package's tests (slow tests need `-m slow`)."""
    _install_all(session)
    session.install("./packages/judge[test,harness]")  # the lm-evaluation-harness bridge is tested here
    args = session.posargs or ["-m", "not slow"]
    session.run("pytest", *[f"packages/{p}/tests" for p in PACKAGES], *args, env=ENV)


def _test_one(session: nox.Session, package: str) -> None:
    torch_free = package in TORCH_FREE
    if not torch_free:
        session.install(TORCH)
    local = ["./packages/formats[llm]" if torch_free else "./packages/formats[test]"] if package != "formats" else []
    local += [f"./packages/{dep}" for dep in LOCAL_DEPS.get(package, [])]
    session.install(*local, f"./packages/{package}[test]")
    if torch_free:  # the proof: the package and its tests installed, and torch did not come with them
        session.run("python", "-c", NO_TORCH)
    session.run("pytest", f"packages/{package}/tests", *(session.posargs or ["-m", "not slow"]), env=ENV)


for _p in PACKAGES:

    def _tests_package(session: nox.Session, package: str = _p) -> None:
        _test_one(session, package)

    _tests_package.__doc__ = f"huarizo-{_p} alone in a fresh venv, with only its declared dependencies."
    nox.session(name=f"tests-{_p}")(_tests_package)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, mypy and the import layers (import-linter)."""
    _install_all(session)  # mypy checks against the real dependencies' types
    session.install("ruff", "mypy", "types-PyYAML", "nox", "import-linter")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")  # the layers of the architecture: [tool.importlinter] in pyproject.toml
    session.run("mypy", *[f"packages/{p}/src" for p in PACKAGES])


@nox.session
def bench(session: nox.Session) -> None:
    """pytest-benchmark over benchmarks/ (or the paths given: `nox -s bench -- benchmarks/formats`): each benchmark
    prints its ratio to the named baseline, and the run's results go to benchmarks/results/DATE_COMMIT.json;
    `-- --compare` then shows each figure against the last committed run and flags regressions over 10%."""
    _install_all(session)
    session.install("pytest-benchmark")
    args = [a for a in session.posargs if a != "--compare"]
    paths = [] if any(Path(arg.split("::")[0]).exists() for arg in args) else ["benchmarks"]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d_%H%M%S")
    git = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True)
    results = Path("benchmarks/results") / f"{stamp}_{git.stdout.strip() if git.returncode == 0 else 'nogit'}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    session.run("pytest", *paths, "-s", "-o", "python_files=bench_*.py", f"--benchmark-json={results}", *args, env=ENV)
    if "--compare" in session.posargs:
        session.run("python", "benchmarks/compare.py", str(results))


def _packages_digest() -> str:
    """A hash of every package's pyproject and sources (what an install of them contains)."""
    h = hashlib.sha256(TORCH.encode())
    for p in PACKAGES:
        root = Path("packages") / p
        for f in sorted([root / "pyproject.toml", *(root / "src").rglob("*")]):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@nox.session(reuse_venv=True)
def demo(session: nox.Session) -> None:
    """The main job: `huarizo run configs/recipes/quickstart.yaml` on the embedded default model (extra arguments go
    to `huarizo run`). The venv is reused while the packages are unchanged."""
    stamp = Path(session.virtualenv.location) / ".huarizo-packages"
    digest = _packages_digest()
    if stamp.exists() and stamp.read_text() == digest:
        session.log(f"reusing {session.virtualenv.location}: the packages did not change since it was installed")
    else:
        _install_all(session, extras=None)
        stamp.write_text(digest)
    session.run("huarizo", "run", "configs/recipes/quickstart.yaml", *session.posargs, env=ENV)
