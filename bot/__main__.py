"""``python -m bot``."""

import os
import sys

# Before torch is imported: OpenMP's default spin-waiting made captions 5-20x slower whenever the
# cores were shared with other work (bench/results/roles_cpu.md); passive waiting costs nothing alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bot.cli import main

sys.exit(main())
