import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("COMPANION_RESULTS", "build/test-results")
