"""passk_companion.runtime: paths as stored outputs print them."""

from passk_companion import runtime


def test_paths_inside_the_checkout_are_shown_relative_to_it(tmp_path):
    root = runtime.repo_root()
    assert runtime.shown_path(root / "params" / "preregistered" / "04.yaml") == (
        "params/preregistered/04.yaml"
    )
    assert runtime.shown_path(tmp_path / "mine.yaml") == str(tmp_path / "mine.yaml")
