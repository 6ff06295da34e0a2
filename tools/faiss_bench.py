#!/usr/bin/env python3
"""FAISS beside vdna-db's query engine (benches/scale.rs runs this).

Usage: faiss_bench.py DIR DIM K

DIR holds base.f32 (N x DIM little-endian float32: the per-neuron means of the stored
DNAs, as vdna-db's summary segment keeps them) and queries.f32 (Q x DIM, the probes'
means). Builds IndexFlatL1 and IndexHNSWFlat (M = 16, efSearch 64; FAISS's HNSW is L2)
over the base, answers each probe's top K one query at a time (as a server would), and
prints JSON: per index, the build seconds, the p50 query milliseconds and the row ids
found. The caller computes recall against the exact EMD answers.

Needs `faiss-cpu` and numpy (PyPI).
"""
import json
import os
import sys
import time

import faiss
import numpy as np


def main():
    d, dim, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    base = np.fromfile(os.path.join(d, "base.f32"), dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(os.path.join(d, "queries.f32"), dtype="<f4").reshape(-1, dim)
    out = {}
    for name, make in [
        ("flat_l1", lambda: faiss.IndexFlat(dim, faiss.METRIC_L1)),
        ("hnsw_flat", lambda: faiss.IndexHNSWFlat(dim, 16)),
    ]:
        t = time.perf_counter()
        index = make()
        index.add(np.ascontiguousarray(base))
        build = time.perf_counter() - t
        if name == "hnsw_flat":
            index.hnsw.efSearch = 64
        times, ids = [], []
        for _ in range(2):
            ids = []
            for q in queries:
                t = time.perf_counter()
                _, found = index.search(q.reshape(1, -1), k)
                times.append((time.perf_counter() - t) * 1e3)
                ids.append([int(x) for x in found[0]])
        times.sort()
        out[name] = {
            "build_s": build,
            "p50_ms": times[len(times) // 2],
            "ids": ids,
            "threads": faiss.omp_get_max_threads(),
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
