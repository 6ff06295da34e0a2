"""Extracts one DNA of a big image source on a Ray cluster: one Ray task per shard, each
running the vdna-db CLI (`push SOURCE --name NAME:TAG --shard I/N`) against a store all
nodes share, then `merge --shards NAME:TAG` once every part is in. The merged DNA is the
DNA a single machine would extract from the same source (histograms add exactly).

  python3 tools/ray/extract_on_ray.py 's3://data/train-{0000..0146}.tar' \
      --name imagenet:train --shards 147 --store s3://dnas/prod -- --dist histogram-1000

Everything after `--` goes to every `push` (extractor, distribution, batch, ...). A task
that fails is retried by Ray; a retried part is stored again under the same name with the
same DNA, so retries duplicate nothing. A part that keeps failing leaves the merge refused
with its index named; run the parts still missing with --only 3,17 (the others stay
stored).

Prints one JSON object: the merge's answer, the tasks (shard, node, seconds) and the
cluster's nodes.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ray


def run_vdna(cmd):
    """Runs vdna-db with --json; its parsed answer, or an error with its stderr."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout)


@ray.remote(max_retries=2, retry_exceptions=True)
def extract_shard(binary, store, source, name, index, shards, threads, flags):
    """One part: `push SOURCE --shard index/shards` into the shared store, with a home
    (cache) of its own on this node."""
    home = tempfile.mkdtemp(prefix=f"vdna-db-shard-{index}-")
    started = time.time()
    try:
        answer = run_vdna(
            [binary, "--json", "--store", store, "--home", home, "push", source,
             "--name", name, "--shard", f"{index}/{shards}", "--threads", str(threads)]
            + flags
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "shard": index,
        "node": ray.get_runtime_context().get_node_id(),
        "seconds": round(time.time() - started, 2),
        "ref": answer.get("ref"),
        "digest": answer.get("digest"),
        "images": answer.get("images"),
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s SOURCE --name NAME:TAG --shards N --store STORE [options] [-- PUSH FLAGS]",
    )
    ap.add_argument("source", help="image source every node can read (URL, pattern, shared path)")
    ap.add_argument("--name", required=True, help="NAME:TAG of the whole DNA")
    ap.add_argument("--shards", type=int, required=True, help="number of parts (Ray tasks)")
    ap.add_argument("--store", required=True,
                    help="the store every node pushes to: s3://bucket/prefix, or a directory "
                         "on a file system all nodes share")
    ap.add_argument("--address", default="auto", help="Ray cluster address [auto]")
    ap.add_argument("--vdna-db", default="vdna-db", dest="binary",
                    help="the vdna-db binary on every node [vdna-db on the PATH]")
    ap.add_argument("--cpus-per-task", type=int, default=1,
                    help="CPUs Ray reserves for each task; the CLI runs that many threads")
    ap.add_argument("--only", default=None,
                    help="comma-separated shard indexes to run (the rest are already stored)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    # After --: flags for every push (e.g. --dist histogram-1000).
    flags = argv[cut + 1:]
    indexes = range(a.shards) if a.only is None else [int(i) for i in a.only.split(",")]

    ray.init(address=a.address, log_to_driver=False)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    task = extract_shard.options(num_cpus=a.cpus_per_task, scheduling_strategy="SPREAD")
    pending = [
        task.remote(a.binary, a.store, a.source, a.name, i, a.shards, a.cpus_per_task, flags)
        for i in indexes
    ]
    done = []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for r in ready:
            part = ray.get(r)
            done.append(part)
            print(f"shard {part['shard']} of {a.shards}: {part['images']} images in "
                  f"{part['seconds']} s on node {part['node'][:8]}", file=sys.stderr)
    merge_home = tempfile.mkdtemp(prefix="vdna-db-merge-")
    try:
        merged = run_vdna([a.binary, "--json", "--store", a.store, "--home", merge_home,
                           "merge", "--shards", a.name])
    finally:
        shutil.rmtree(merge_home, ignore_errors=True)
    print(json.dumps({"merged": merged, "tasks": sorted(done, key=lambda p: p["shard"]),
                      "nodes": nodes}, indent=2))


if __name__ == "__main__":
    main()
