"""Run every benchmark script in bench/ in turn (each writes bench/results/NAME.json)."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
for script in sorted(here.glob("*.py")):
    if script.name in ("common.py", "run_all.py", "multi30k.py"):
        continue  # multi30k.py is an hour-long training run: start it by hand
    print(f"== {script.name}", flush=True)
    subprocess.run([sys.executable, str(script)], check=True, cwd=here)
