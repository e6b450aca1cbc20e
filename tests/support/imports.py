"""What a piece of code imports: run it in a fresh interpreter (nothing else loaded by the test
process leaks in) and list the modules it left in ``sys.modules`` (issue 12: what the proxy pays
for before its first sync)."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded_by(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """Sorted names of the modules starting with one of ``prefixes`` that are imported after
    running ``code`` (Python source) in a new interpreter; CalledProcessError if it fails."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules " \
            f"if m.startswith({prefixes!r}))))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return list(json.loads(out.strip().splitlines()[-1]))
