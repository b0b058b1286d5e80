"""Run pip-audit over the installed dependencies and say plainly what it could check.

pip-audit asks a vulnerability service (PyPI's JSON API or OSV) about every
installed package.  Where that service cannot be reached (a machine with only a
package mirror), pip-audit still exits 0 with "No known vulnerabilities found"
while auditing nothing: this wrapper counts the packages actually audited,
prints the figure, and fails only on a known vulnerability, or when
``CONVEYOR_REQUIRE_AUDIT=1`` and nothing could be audited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main() -> int:
    cmd = [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off"]
    proc = subprocess.run([*cmd, "-f", "json"], capture_output=True, text=True, timeout=600)
    try:
        deps = json.loads(proc.stdout)["dependencies"]
    except (ValueError, KeyError):
        print(f"pip-audit did not run: {proc.stderr.strip()[-500:]}")
        return 1
    skipped = [d for d in deps if "skip_reason" in d]
    vulns = [(d["name"], d["version"], v["id"]) for d in deps for v in d.get("vulns", [])]
    audited = len(deps) - len(skipped)
    print(
        f"pip-audit: {audited} of {len(deps)} packages audited, {len(vulns)} known vulnerabilities"
    )
    for name, version, vid in vulns:
        print(f"  {name} {version}: {vid}")
    if skipped and audited == 0:
        reason = skipped[0]["skip_reason"]
        print(
            "pip-audit: NOTHING WAS AUDITED: the vulnerability service cannot be reached from "
            f"here (first reason: {reason}). Run it where PyPI's JSON API or OSV is reachable."
        )
        if os.environ.get("CONVEYOR_REQUIRE_AUDIT") == "1":
            return 1
    return 1 if vulns else 0


if __name__ == "__main__":
    sys.exit(main())
