"""Fetch the GPL-3-compatible landscape/nature photographs used to train the VQGAN tokenizer.

Why: the tokenizer's weights ship in this repo under GPL-3.0, so every training image must
carry a licence that allows that (GPL-2+/GPL-3, LGPL, CC-BY, CC-BY-SA-4.0, CC0). Debian's
desktop-wallpaper packages ship real photographs with per-file licences recorded in each
package's ``/usr/share/doc/<pkg>/copyright``, and they are reachable with the ordinary package
client. The table below is the reviewed list (see ``docs/training_photos.md`` for the copyright
lines, the attribution and every rejected candidate); this script only reproduces it:

1. ``apt-get download`` the exact package versions that were reviewed (Debian 12 "bookworm");
2. unpack each ``.deb`` with ``dpkg-deb -x`` into a temporary folder;
3. check each listed file's SHA-256 prefix, then write it as ``<package>__<stem>.png``, its
   long side at most 2048 px (Lanczos), into ``--out`` (default ``output/photos``).

It fails with a clear message when apt-get/dpkg-deb is missing, a package cannot be downloaded
(run ``apt-get update`` first) or a listed file is absent or different. ``--any-version`` takes
whatever version apt offers instead of the pinned one and skips the checksum check: re-check the
licences in that version's copyright file before using the result.

Usage:  python scripts/fetch_photos.py [--out output/photos] [--any-version]
"""
from __future__ import annotations

import argparse
import hashlib
import pathlib
import shutil
import subprocess
import sys
import tempfile

from PIL import Image, ImageOps

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_SIDE = 2048

# Package -> version reviewed (Debian 12 bookworm, all architecture-independent).
VERSIONS = {
    "mate-backgrounds": "1.26.0-1",
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "sddm-theme-maldives": "0.19.0-5",
}

_MATE = "/usr/share/backgrounds/mate/nature/"
_LOMIRI = "/usr/share/backgrounds/"
_KDE = "/usr/share/wallpapers/"
_KDE_LIC = "GPL-2+ (debian/copyright); LGPL-3 (metadata.json)"

# (package, path inside the package, output stem, licence, author, sha256 prefix of the original)
PHOTOS = (
    ("mate-backgrounds", _MATE + "Aqua.jpg", "Aqua", "GPL-2+", "Charles Barbin", "5c30118205982da4"),
    ("mate-backgrounds", _MATE + "Blinds.jpg", "Blinds", "GPL-2+",
     "Lennart Poettering, Andrea Cimitan", "f7aac0dcc2e06d04"),
    ("mate-backgrounds", _MATE + "Dune.jpg", "Dune", "GPL-2+",
     "Marco Cogoni, Hylke Bons", "8a67c2cb0be8c46b"),
    ("mate-backgrounds", _MATE + "FreshFlower.jpg", "FreshFlower", "GPL-2+", "Jens Ansorg",
     "972b0a0c4e5e3fa9"),
    ("mate-backgrounds", _MATE + "Garden.jpg", "Garden", "GPL-2+", "Charles Barbin",
     "d3095ee09d425ef2"),
    ("mate-backgrounds", _MATE + "GreenMeadow.jpg", "GreenMeadow", "GPL-2+",
     "Timothy Schellhase, Lapo Calamandrei", "8fa0de0aa4089f73"),
    ("mate-backgrounds", _MATE + "LadyBird.jpg", "LadyBird", "GPL-2+", "Charles Barbin",
     "e35a9a4126ef969c"),
    ("mate-backgrounds", _MATE + "RainDrops.jpg", "RainDrops", "GPL-2+", "blackcombwhistler07",
     "3e4ea9671c28c90a"),
    ("mate-backgrounds", _MATE + "Storm.jpg", "Storm", "GPL-2+", "Sergey Nazarov",
     "77ca53077831d323"),
    ("mate-backgrounds", _MATE + "TwoWings.jpg", "TwoWings", "GPL-2+",
     "Charles Barbin, Hylke Bons", "665e5abf8a539907"),
    ("mate-backgrounds", _MATE + "YellowFlower.jpg", "YellowFlower", "GPL-2+", "Charles Barbin",
     "254da96256acb7ad"),
    ("lomiri-wallpapers-16.04", _LOMIRI + "aitzgorri_by_Aitzol_Berasategi.jpg",
     "aitzgorri_by_Aitzol_Berasategi", "CC-BY-4.0", "Aitzol Berasategi", "66268e7b48f8854d"),
    ("lomiri-wallpapers-16.04", _LOMIRI + "life_by_Aitzol_Berasategi.jpg",
     "life_by_Aitzol_Berasategi", "CC-BY-4.0", "Aitzol Berasategi", "4c119350ead80201"),
    ("lomiri-wallpapers-16.04", _LOMIRI + "picosdeeuropa_by_Aitzol_Berasategi.jpg",
     "picosdeeuropa_by_Aitzol_Berasategi", "CC-BY-4.0", "Aitzol Berasategi", "414d0072b2f6f2c5"),
    ("lomiri-wallpapers-16.04", _LOMIRI + "sunset_by_Aitzol_Berasategi.jpg",
     "sunset_by_Aitzol_Berasategi", "CC-BY-4.0", "Aitzol Berasategi", "474dab6a4b9f94dc"),
    ("lomiri-wallpapers-16.04", _LOMIRI + "seeding_by_Clements_Engelhardt.jpg",
     "seeding_by_Clements_Engelhardt", "CC0-1.0", "Clemens Engelhardt", "a5634d1ab5e41a35"),
    ("lomiri-wallpapers-16.04", _LOMIRI + "Bridge_by_Sander_Klootwijk.jpg",
     "Bridge_by_Sander_Klootwijk", "CC-BY-SA-4.0", "Sander Klootwijk", "bd86b081f9975e2b"),
    ("lomiri-wallpapers-16.04", _LOMIRI + "Dragonfly_by_Bolly.jpg", "Dragonfly_by_Bolly",
     "CC-BY-SA-4.0", "Bolly", "af5af17841009732"),
    ("plasma-workspace-wallpapers", _KDE + "BytheWater/contents/images/2560x1600.jpg",
     "BytheWater_2560x1600", _KDE_LIC, "Maciej Wiklo", "c272434ef39f2abf"),
    ("plasma-workspace-wallpapers", _KDE + "ColdRipple/contents/images/2560x1600.jpg",
     "ColdRipple_2560x1600", _KDE_LIC, "Risto Saukonpää", "05bef6722fc0ed81"),
    ("plasma-workspace-wallpapers", _KDE + "DarkestHour/contents/images/2560x1600.jpg",
     "DarkestHour_2560x1600", _KDE_LIC, "Risto Saukonpää", "8e3703fae3a3c217"),
    ("plasma-workspace-wallpapers", _KDE + "EveningGlow/contents/images/2560x1600.jpg",
     "EveningGlow_2560x1600", _KDE_LIC, "Ian Hex", "586682dcb362b9f6"),
    ("plasma-workspace-wallpapers", _KDE + "FallenLeaf/contents/images/2560x1600.jpg",
     "FallenLeaf_2560x1600", _KDE_LIC, "Martin Klapetek", "95603a6560c7e8d5"),
    ("plasma-workspace-wallpapers", _KDE + "Kite/contents/images/2560x1600.jpg",
     "Kite_2560x1600", _KDE_LIC, "Risto Saukonpää", "bdca288ce296a981"),
    ("plasma-workspace-wallpapers", _KDE + "OneStandsOut/contents/images/2560x1600.jpg",
     "OneStandsOut_2560x1600", _KDE_LIC, "Risto Saukonpää", "cb507baf1dafdcae"),
    ("plasma-workspace-wallpapers", _KDE + "Path/contents/images/2560x1600.jpg",
     "Path_2560x1600", _KDE_LIC, "Risto Saukonpää", "7477457d7f17b736"),
    ("plasma-workspace-wallpapers", _KDE + "summer_1am/contents/images/2560x1600.jpg",
     "summer_1am_2560x1600", _KDE_LIC, "Risto Saukonpää", "c868b50789591dd4"),
    ("sddm-theme-maldives", "/usr/share/sddm/themes/maldives/background.jpg", "background",
     "CC-BY-3.0", "Nevit Dilmen", "032d28ee4f3d885e"),
)


def fail(msg: str) -> None:
    sys.exit(f"fetch_photos: {msg}")


def download(packages: list[str], dest: pathlib.Path, pinned: bool) -> dict[str, pathlib.Path]:
    """apt-get download each package into ``dest``; return package -> .deb path."""
    specs = [f"{p}={VERSIONS[p]}" if pinned else p for p in packages]
    proc = subprocess.run(["apt-get", "download", *specs], cwd=dest, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        fail(f"apt-get download {' '.join(specs)} failed (try 'apt-get update' first"
             f"{'' if not pinned else ', or --any-version if this is not Debian 12'}):\n"
             f"{proc.stderr.strip()}")
    debs = {}
    for p in packages:
        found = sorted(dest.glob(f"{p}_*.deb"))
        if not found:
            fail(f"apt-get reported success but no .deb for {p} is in {dest}")
        debs[p] = found[0]
    return debs


def save_resized(src: pathlib.Path, dst: pathlib.Path) -> tuple[int, int]:
    with Image.open(src) as raw:
        im = ImageOps.exif_transpose(raw).convert("RGB")
    scale = MAX_SIDE / max(im.size)
    if scale < 1:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
    im.save(dst, format="PNG", optimize=False)
    return im.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "output" / "photos",
                    help="folder for the PNGs (default: output/photos)")
    ap.add_argument("--any-version", action="store_true",
                    help="download whatever version apt offers; skips the checksum check")
    args = ap.parse_args()

    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            fail(f"'{tool}' not found: this script needs a Debian/Ubuntu machine with apt.")

    packages = sorted({row[0] for row in PHOTOS})
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch_photos_") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        debs = download(packages, tmp, pinned=not args.any_version)
        roots = {}
        for pkg, deb in debs.items():
            roots[pkg] = tmp / "x" / pkg
            roots[pkg].mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(roots[pkg])], check=True)
        missing = [f"{pkg}:{path}" for pkg, path, *_ in PHOTOS
                   if not (roots[pkg] / path.lstrip("/")).is_file()]
        if missing:
            fail("listed files missing from the packages:\n  " + "\n  ".join(missing))
        for pkg, path, stem, licence, author, sha in PHOTOS:
            src = roots[pkg] / path.lstrip("/")
            digest = hashlib.sha256(src.read_bytes()).hexdigest()
            if not args.any_version and not digest.startswith(sha):
                fail(f"{pkg}:{path} has sha256 {digest[:16]}, expected {sha}: not the reviewed file")
            dst = args.out / f"{pkg}__{stem}.png"
            w, h = save_resized(src, dst)
            print(f"{dst.name}  {w}x{h}  {licence}  ({author})")
    print(f"{len(PHOTOS)} photos written to {args.out}")


if __name__ == "__main__":
    main()
