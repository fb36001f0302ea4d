"""The README's Python snippets (its ``>>>`` examples) run as written, so they cannot go stale."""
import doctest
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_examples_run(tmp_path, monkeypatch, seeded_one_thread):
    monkeypatch.chdir(tmp_path)                   # the examples write their folders here
    failures, attempted = doctest.testfile(str(README), module_relative=False,
                                           optionflags=doctest.ELLIPSIS
                                           | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert attempted >= 15, f"only {attempted} examples found in {README}"
    assert failures == 0, f"{failures} of {attempted} README examples failed (see above)"
