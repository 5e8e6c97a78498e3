"""Make ``tests.kubeapi_emulator`` importable however pytest is started.

The emulator lives at tests/kubeapi_emulator.py so it also runs standalone
(``python -m tests.kubeapi_emulator`` from the repository root).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
