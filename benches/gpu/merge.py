"""Merge the JSON of a second try into the first's: a phase the later run finished (status ok)
replaces the earlier one; the GPU tests' outcome and set-up come from the later run when it ran them.

    python benches/gpu/merge.py FIRST.json SECOND.json OUT.json
"""

from __future__ import annotations

import json
import sys


def merge(first: dict, second: dict) -> dict:
    merged = {**first, "phases": dict(first["phases"]), "tries": [t for d in (first, second) for t in d.get(
        "tries", [{"started_utc": d["started_utc"], "command": d["command"]}])]}
    for name, phase in second["phases"].items():
        if phase["status"] == "ok" or name not in merged["phases"]:
            merged["phases"][name] = phase
    if second.get("gpu_tests"):
        merged.update(gpu_tests=second["gpu_tests"], setup=second["setup"])
    return merged


def main(argv=None):
    first_path, second_path, out_path = argv or sys.argv[1:]
    with open(first_path) as a, open(second_path) as b:
        merged = merge(json.load(a), json.load(b))
    with open(out_path, "w") as f:
        json.dump(merged, f, indent=1)
    print(f"wrote {out_path}: " + ", ".join(f"{n} {p['status']}" for n, p in merged["phases"].items()))


if __name__ == "__main__":
    main()
