"""Writes fixtures/parquet/: small Parquet files of encoded images, made by pyarrow (an
independent writer), for the Parquet source tests.

  python3 tools/make_parquet_fixtures.py

- hf-images.parquet: the Hugging Face datasets layout, a struct column `image` with
  `bytes` and `path`, plus a `label`; snappy (pyarrow's default), row groups of 2 rows.
  Rows: gradient, gray, noise, gradient, gray, noise, then one row whose image is null.
- binary-images.parquet: a plain binary column `jpg_bytes` (the same three images twice)
  beside a string column; zstd.
The same images as files are fixtures/images/{gradient,gray,noise}.png.
"""
import os

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.join(os.path.dirname(__file__), "..")
IMAGES = ["gradient.png", "gray.png", "noise.png"]


def main():
    data = [open(os.path.join(ROOT, "fixtures/images", n), "rb").read() for n in IMAGES]
    rows = [{"bytes": data[i % 3], "path": IMAGES[i % 3]} for i in range(6)] + [None]
    image_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    t = pa.table(
        {
            "image": pa.array(rows, type=image_t),
            "label": pa.array([i % 3 for i in range(7)], type=pa.int64()),
        }
    )
    out = os.path.join(ROOT, "fixtures/parquet")
    os.makedirs(out, exist_ok=True)
    pq.write_table(t, os.path.join(out, "hf-images.parquet"), row_group_size=2)
    b = pa.table(
        {
            "key": pa.array([f"{i:04d}" for i in range(6)]),
            "jpg_bytes": pa.array([data[i % 3] for i in range(6)], type=pa.binary()),
        }
    )
    pq.write_table(b, os.path.join(out, "binary-images.parquet"), compression="zstd")


if __name__ == "__main__":
    main()
