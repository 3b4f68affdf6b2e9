"""passk_companion.repro: paths as stored outputs print them."""

from passk_companion import repro


def test_paths_inside_the_checkout_are_shown_relative_to_it(tmp_path):
    root = repro.repo_root()
    assert repro.shown_path(root / "params" / "preregistered" / "04.yaml") == (
        "params/preregistered/04.yaml"
    )
    assert repro.shown_path(tmp_path / "mine.yaml") == str(tmp_path / "mine.yaml")
