import pytest

from companion import claims, cli, report


def test_report_has_one_row_per_claim_and_maps_verdicts(tmp_path):
    path = tmp_path / "claims.csv"
    rows = [
        claims.Claim("a", "x | y", "Thm 3.1", "01_nb", "1 | 2", "yes", "fig.png"),
        claims.Claim("b", "z", "open question 2", "05_nb", "3", "no"),
        claims.Claim("c", "w", "Thm 3.2", "03_nb", "4", "partly"),
    ]
    claims.record(rows, path)
    text = report.build(path).read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and "verdict" not in ln]
    assert len(table) == 3
    assert (
        table[0].endswith("| holds |") and "x \\| y" in table[0] and "01_nb (fig.png)" in table[0]
    )
    assert table[1].endswith("| holds only in part |") and table[2].endswith("| fails |")
    assert "1 holds, 1 fails, 1 holds only in part" in text


def test_report_without_claims_fails_clearly(tmp_path, capsys):
    with pytest.raises(ValueError, match="no claims"):
        report.build(tmp_path / "claims.csv")
    assert cli.main(["report", "--claims", str(tmp_path / "claims.csv")]) == 2
    assert "no claims" in capsys.readouterr().err
