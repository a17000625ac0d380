"""scikit-learn's digits as an .npz for `jal run --data`: 1,797 8x8 images as 64-dim vectors.

    .venv/bin/python experiments/digits.py OUT.npz [--test-size 500] [--split-seed 0]

A fixed stratified split (`sklearn.model_selection.train_test_split`): 1,297 train and
500 test by default. x_train and x_test are float32 [N, 64], the raw pixel intensities
0..16 (`jal run` standardises every feature with the training split's statistics unless
--no-normalize); y_train and y_test are int64 in 0..9. Prints the split's sizes and an
MD5 of the arrays' contents, to compare with the one in the results.
Needs scikit-learn, whose copy of the dataset ships with it (no download).
"""

import argparse
import hashlib
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def digits_splits(test_size: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def arrays_md5(arrays: dict[str, np.ndarray]) -> str:
    md5 = hashlib.md5()
    for key in sorted(arrays):
        md5.update(key.encode() + str(arrays[key].dtype).encode() + str(arrays[key].shape).encode())
        md5.update(np.ascontiguousarray(arrays[key]).tobytes())
    return md5.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .npz file to write")
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--split-seed", type=int, default=0, help="random_state of the stratified split")
    args = parser.parse_args()
    arrays = digits_splits(args.test_size, args.split_seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    sizes = ", ".join(f"{key} {list(value.shape)}" for key, value in arrays.items())
    print(f"wrote {out}: {sizes}; arrays md5 {arrays_md5(arrays)}")


if __name__ == "__main__":
    main()
