"""The Python fuzz targets (fuzz/sealed_fuzzer.py) run clean on their seed corpus (fuzz/make_corpus.py),
on a few hundred mutations of it, and on every saved regression input, so the harness cannot rot
when the format changes."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
pytestmark = pytest.mark.engine_independent  # the targets pick their own engine


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"_fuzz_{name}", FUZZ / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def harness():
    return _module("sealed_fuzzer")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    maker = _module("make_corpus")
    import secrets

    saved = secrets.token_bytes
    try:
        assert maker.main(["make_corpus.py", str(out)]) == 0
    finally:
        secrets.token_bytes = saved  # make_corpus seeds it for reproducible corpora
    return out


TARGETS = ["load", "index", "textcodec", "slots", "trailer", "pin", "identity", "parsers"]


def test_every_target_is_registered(harness):
    assert sorted(harness.TARGETS) == sorted(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_and_mutations_run_clean(harness, corpus, target):
    seeds = [p.read_bytes() for p in sorted((corpus / target).iterdir())]
    assert seeds, f"no seeds for {target}"
    run = harness.TARGETS[target]
    for seed in seeds:
        run(seed)
    rng = random.Random(target)
    for _ in range(40 if target in ("load", "index") else 300):
        run(harness._mutate(rng, rng.choice(seeds), seeds))


def test_saved_regressions_run_clean(harness):
    """fuzz/regressions/<target>/* for the Python targets (engine/ is the C target's)."""
    for directory in sorted(p for p in (FUZZ / "regressions").iterdir()
                            if p.is_dir() and p.name in TARGETS):
        for path in sorted(directory.iterdir()):
            harness.TARGETS[directory.name](path.read_bytes())


def test_the_parsers_target_reaches_each_parser(harness, corpus):
    names = set()
    for path in (corpus / "parsers").iterdir():
        name = path.name.split("-", 1)[0]
        selector = path.read_bytes()[0]
        assert harness._PARSERS[selector % len(harness._PARSERS)].__name__ == f"target_{name}"
        names.add(name)
    assert names == {"textcodec", "slots", "trailer", "pin", "identity"}
