"""Send the GPU check a working tree under the device's 64 MiB: move what it does not need
into an ignored folder (ignored files do not travel) before the device call, back after.

    python benches/gpu/pack.py size    # MiB that would travel now, and once packed (wheels included)
    python benches/gpu/pack.py out     # move MOVED into .gpu_stash/ (refuses if something is there)
    python benches/gpu/pack.py back    # move them back (refuses to overwrite a file)

What travels is every tracked file and every untracked file git does not ignore, plus the
carried paths (.whl/). While packed, the demo's students and the unshipped adaptors are
missing from the tree (git status shows them deleted): put them back right after the call.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STASH = ".gpu_stash"  # in .gitignore
# Not read by the check (benches/gpu, tests/test_gpu_cuda.py): the distilled students (42 MB of
# UNets), the adaptors fitted for students that ship none, demo-flux (12 MB) and the demo's
# ControlNet (7 MB).
MOVED = ("clockwork_engine/demo/weights/students", "benches/adaptors", "clockwork_engine/demo/weights_flux",
         "clockwork_engine/demo/weights/controlnets")
LIMIT = 64 * 2**20
WHEELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wheels.txt")


def travelling_files(root: str = ROOT) -> list[str]:
    """Paths (relative to root) of tracked and untracked-not-ignored files that exist."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout.decode()
    return sorted({p for p in out.split("\0") if p and os.path.lexists(os.path.join(root, p))})


def _under(path: str, folders) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


def wheel_bytes() -> int:
    """The carried wheels' size as wheels.txt records it (name, bytes, sha256 a line)."""
    with open(WHEELS) as f:
        return sum(int(line.split()[1]) for line in f if line.strip() and not line.startswith("#"))


def travelling_bytes(root: str = ROOT, packed: bool = False, moved=MOVED) -> int:
    """Bytes of the working tree that travel, now or once `moved` is out of it."""
    files = [p for p in travelling_files(root) if not (packed and _under(p, moved))]
    return sum(os.lstat(os.path.join(root, p)).st_size for p in files)


def out(root: str = ROOT, moved=MOVED):
    stash = os.path.join(root, STASH)
    if os.path.exists(stash) and os.listdir(stash):
        raise SystemExit(f"{stash} is not empty: already packed? Run `pack.py back` first")
    for rel in moved:
        src = os.path.join(root, rel)
        if os.path.exists(src):
            dst = os.path.join(stash, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(src, dst)  # a rename: same file system
            print(f"moved {rel} -> {STASH}/{rel}")


def back(root: str = ROOT, moved=MOVED):
    stash = os.path.join(root, STASH)
    for rel in moved:
        src, dst = os.path.join(stash, rel), os.path.join(root, rel)
        if not os.path.exists(src):
            continue
        if os.path.exists(dst):
            raise SystemExit(f"{rel} exists in the tree and in {STASH}/: compare them and move one by hand")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.move(src, dst)
        print(f"moved {STASH}/{rel} -> {rel}")
    shutil.rmtree(stash, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("size", "out", "back"))
    action = ap.parse_args(argv).action
    if action == "out":
        out()
    elif action == "back":
        back()
    mib = lambda n: n / 2**20  # noqa: E731
    now, packed, wheels = travelling_bytes(), travelling_bytes(packed=True), wheel_bytes()
    print(f"travels now: {mib(now + wheels):.1f} MiB; packed: {mib(packed + wheels):.1f} MiB "
          f"(wheels {mib(wheels):.1f} MiB included; the limit is {mib(LIMIT):.0f} MiB)")
    return 0 if packed + wheels < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
