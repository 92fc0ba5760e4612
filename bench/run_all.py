"""Run every benchmark script in bench/ in turn (each writes bench/results/NAME.json)."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
for script in sorted(here.glob("*.py")):
    if script.name in (
        "common.py",
        "run_all.py",
        "multi30k.py",
        "nanogpt.py",
        "instruct_translation.py",
    ):
        continue  # hour-long training runs, and one that needs a nanoGPT checkout: by hand
    print(f"== {script.name}", flush=True)
    subprocess.run([sys.executable, str(script)], check=True, cwd=here)
