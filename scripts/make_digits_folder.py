"""Write scikit-learn's digits as an image folder (the layout of studies/own_data.yaml):

python scripts/make_digits_folder.py data/digits_folder [--size 32]
"""

from __future__ import annotations

import argparse

from nas_kd.testing.digits_folder import write_digits_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="data/digits_folder", help="folder to write (default %(default)s)")
    parser.add_argument("--size", type=int, default=32, help="image height and width (default %(default)s)")
    args = parser.parse_args()
    root = write_digits_folder(args.root, args.size)
    count = sum(1 for p in root.rglob("*.png"))
    print(f"wrote {count} PNG images to {root}/{{train,val,test}}/<class>/")


if __name__ == "__main__":
    main()
