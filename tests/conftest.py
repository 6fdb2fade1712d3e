import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hypothesis import settings

# No per-example deadline: speed is measured by bench/ scripts, and a shared 2-core CI
# machine makes wall-clock limits in unit tests flaky.
settings.register_profile("xfrmwatch", deadline=None)
settings.load_profile("xfrmwatch")
