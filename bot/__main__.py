"""``python -m bot``."""

import os
import sys

# Before torch is imported: OpenMP's default spin-waiting made captions 5-20x slower whenever the
# cores were shared with other work (bench/results/roles_cpu.md); passive waiting costs nothing alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The guard matters: the isolated image decoder (bot/decode_sandbox.py) starts its worker processes
# with "spawn", which imports this module again in each child under another name.
if __name__ == "__main__":
    from bot.cli import main

    sys.exit(main())
