"""Assemble the root file system of an image that runs a Python virtual environment and nothing else.

usage: python runtime_root.py ROOT VENV

Copies into ROOT the virtual environment, the interpreter it runs on and that interpreter's standard library
(without its test suite and the modules for a desktop or a build), every shared library they load (found with
`ldd`), the certificate authorities and the time zones, and writes /etc/passwd and /etc/group for one user,
`mlops` (uid 10001). The serving image (deploy/Dockerfile.serve) copies ROOT onto an empty image: it holds no
shell, package manager or compiler, which the server never runs."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

USER_ID = 10001
STDLIB_SKIPPED = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages", "dist-packages", "config-3.11-x86_64-linux-gnu"}


def copy(path:Path, root:Path) -> None:
    "Copy `path` to the same place under `root`, following a chain of symbolic links and keeping each link."
    target = root/str(path).lstrip("/")
    if target.is_symlink() or target.exists(): return
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        link = os.readlink(path)
        target.symlink_to(link)
        copy(Path(os.path.normpath(path.parent/link)), root)
    elif path.is_dir(): shutil.copytree(path, target, symlinks=True)
    else: shutil.copy2(path, target)


def elf_files(folder:Path) -> list[Path]:
    "The shared objects and programs under `folder`."
    found = []
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink() and (p.suffix == ".so" or ".so." in p.name or os.access(p, os.X_OK)):
            with open(p, "rb") as f:
                if f.read(4) == b"\x7fELF": found.append(p)
    return found


def linked_libraries(files:list[Path]) -> set[Path]:
    "Every shared library that `files` load, as `ldd` resolves them, the dynamic loader included."
    libraries = set()
    for f in files:
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            words = line.split()
            if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
                libraries.add(Path(words[words.index("=>") + 1]))
            elif words and words[0].startswith("/"): libraries.add(Path(words[0]))
    return libraries


def main(root:Path, venv:Path) -> None:
    interpreter = Path(os.path.realpath(venv/"bin"/"python"))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    copy(venv, root)
    for link in (venv/"bin").iterdir():  # the venv's python links lead to the interpreter outside it
        if link.is_symlink(): copy(Path(os.path.normpath(link.parent/os.readlink(link))), root)
    copy(interpreter, root)
    shutil.copytree(stdlib, root/str(stdlib).lstrip("/"), symlinks=True, dirs_exist_ok=True,
                    ignore=lambda folder, names: [n for n in names if n in STDLIB_SKIPPED and Path(folder) == stdlib])
    for library in sorted(linked_libraries([interpreter, *elf_files(stdlib), *elf_files(venv)])):
        if venv not in library.parents: copy(library, root)
    for shared in ("/etc/ssl/certs/ca-certificates.crt", "/usr/share/zoneinfo"):
        if Path(shared).exists(): copy(Path(shared), root)
    (root/"etc"/"passwd").write_text(f"root:x:0:0:root:/root:/sbin/nologin\nmlops:x:{USER_ID}:{USER_ID}::/home/mlops:/sbin/nologin\n")
    (root/"etc"/"group").write_text(f"root:x:0:\nmlops:x:{USER_ID}:\n")
    (root/"tmp").mkdir(exist_ok=True)
    (root/"tmp").chmod(0o1777)


if __name__ == "__main__":
    if len(sys.argv) != 3: sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
