"""Coverage-guided fuzzing of the scenario loader with atheris (libFuzzer).

Run it for a while (the seeds are the invalid-file corpus and the examples):

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python tests/fuzz/fuzz_scenario_loader.py -max_total_time=600 \\
        -rss_limit_mb=2048 -timeout=10 build/fuzz-corpus tests/invalid scenarios

or through pytest, which runs it only when asked: ``BLOSSOM_FUZZ_SECONDS=600 make test``
(or ``.venv/bin/pytest -q tests/fuzz``). A crash leaves ``crash-*`` (the input) in
the working directory; replay it with ``python tests/fuzz/fuzz_scenario_loader.py
crash-...``. ``-timeout`` is the per-input time bound and ``-rss_limit_mb`` the
memory bound libFuzzer enforces.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["bot", "yaml", "pydantic"]):
    from loader_target import check_one


def test_one_input(data: bytes) -> None:
    check_one(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
