"""The evidence: how numbers become verdicts and reports. No torch, no theory, no model.

verdicts (the statistical rules), claims (one file of rows per notebook), report (REPORT.md),
site (the static site), plots, params (notebook parameter checks) and matching (equal progress).
"""
