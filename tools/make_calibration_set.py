#!/usr/bin/env python3
"""Builds the calibration image set behind the shipped activation ranges.

The set is the sample images bundled in the scikit-image 0.26.0 wheel (skimage/data/:
photographs, textures, microscopy, astronomy, text, synthetic patterns; 29 files), taken
straight from the wheel so the set is the same on every machine. Standard library only:

    python3 tools/make_calibration_set.py OUT_DIR [--wheel PATH]

Without --wheel the wheel is fetched with `pip download` (no install). The ranges are then
computed with vdna-db itself, e.g.

    vdna-db ranges OUT_DIR --extractor efficientnet_lite0 -o assets/ranges/efficientnet_lite0.json
"""

import argparse
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "scikit-image==0.26.0"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".gif", ".bmp")


def fetch_wheel(dest):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "-d", dest, PACKAGE],
        check=True,
    )
    wheels = glob.glob(os.path.join(dest, "scikit_image-0.26.0-*.whl"))
    if not wheels:
        sys.exit("pip download produced no scikit-image wheel")
    return wheels[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--wheel", help="an already downloaded scikit-image 0.26.0 wheel")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(tmp)
        os.makedirs(args.out_dir, exist_ok=True)
        n = 0
        with zipfile.ZipFile(wheel) as z:
            for name in sorted(z.namelist()):
                if name.startswith("skimage/data/") and name.count("/") == 2 and name.lower().endswith(EXTENSIONS):
                    data = z.read(name)
                    with open(os.path.join(args.out_dir, os.path.basename(name)), "wb") as f:
                        f.write(data)
                    print(f"{hashlib.sha256(data).hexdigest()[:16]}  {os.path.basename(name)}")
                    n += 1
    print(f"{n} calibration images in {args.out_dir}")


if __name__ == "__main__":
    main()
