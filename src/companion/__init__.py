"""Companion library to "Pass@k Metric for RLVR: A Diagnostic Tool of Exploration, But Not an
Objective" (arXiv 2511.16231). Notebooks import from here; everything they compute is tested."""

__version__ = "0.1.0"
