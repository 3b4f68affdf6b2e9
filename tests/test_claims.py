import pytest

from companion import claims


def _claim(i, holds="yes", nb="01"):
    return claims.Claim(id=i, claim="c", paper="Thm 3.1", notebook=nb, measured="0", holds=holds)


def test_record_upserts_by_notebook_and_id(tmp_path):
    path = tmp_path / "claims.csv"
    claims.record([_claim("a"), _claim("b")], path)
    claims.record([_claim("a", holds="no"), _claim("a", nb="02")], path)
    rows = {(c.notebook, c.id): c.holds for c in claims.read(path)}
    assert rows == {("01", "a"): "no", ("01", "b"): "yes", ("02", "a"): "yes"}
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_bad_verdict_and_duplicates_rejected(tmp_path):
    with pytest.raises(ValueError, match="holds must be"):
        _claim("a", holds="maybe")
    with pytest.raises(ValueError, match="duplicate"):
        claims.record([_claim("a"), _claim("a")], tmp_path / "c.csv")


def test_verdict_mapping():
    assert (claims.verdict(True), claims.verdict(False), claims.verdict(True, partly=True)) == (
        "yes",
        "no",
        "partly",
    )
