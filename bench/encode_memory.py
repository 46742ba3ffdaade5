"""`rlhf-img encode` memory and speed at two dataset sizes: peak RSS must stay flat as the pairs grow.

Renders shapes-world pairs (an image and a same-stem .txt caption) into a folder per size, then encodes each folder
with `checkpoints/shapes-tiny` in its own subprocess (so each peak is that run's alone: `ru_maxrss` of the child)
and prints a table of peak RSS (also above a run that encodes one pair: the interpreter, torch and the model) and
images/second, with the ratio of the largest size to the smallest. The encode streams rows, so the ratio should be
close to 1; a loader that kept images or actions in memory would grow with N.

`--kill_check` then encodes the largest folder again, SIGKILLs it once about half of its shards are written, reruns
it, and checks that the result equals the uninterrupted run's row for row (every pair encoded exactly once).

    python bench/encode_memory.py                                   # 1,000 and 5,000 32x32 PNGs
    python bench/encode_memory.py --kill_check --json encode.json
    python bench/encode_memory.py --source_size 256 --format jpg     # larger JPEGs: decode + resize cost
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RESULT_PREFIX = "ENCODE_BENCH_RESULT "


def render_folder(folder: str, count: int, source_size: int, image_format: str, seed: int = 0) -> None:
    """`count` shapes pairs as `NNNNNN.<format>` + `NNNNNN.txt` (nearest-upscaled to `source_size`)."""
    from PIL import Image

    from rlhf_img.worlds import shapes

    os.makedirs(folder, exist_ok=True)
    prompts, rng = shapes.all_prompts(), random.Random(seed)
    for index in range(count):
        row = prompts[rng.randrange(len(prompts))]
        image = Image.fromarray(shapes.render_prompt(row, rng.randrange(2**31)))
        if source_size != image.width:
            image = image.resize((source_size, source_size), Image.NEAREST)
        options = {"quality": 90} if image_format == "jpg" else {}
        image.save(os.path.join(folder, f"{index:06d}.{image_format}"), **options)
        with open(os.path.join(folder, f"{index:06d}.txt"), "w") as f:
            f.write(row["prompt"])


def child(args: argparse.Namespace) -> None:
    """Run one encode in this process and print its summary and this process's peak RSS."""
    from rlhf_img.upstream.encode import EncodeConfig, run_encode

    config = EncodeConfig(
        model_name_or_path=args.checkpoint,
        dataset=args.dataset,
        output_dir=args.output_dir,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        max_examples=args.max_examples,
        use_cpu=True,
    )
    summary = run_encode(config)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        RESULT_PREFIX
        + json.dumps(
            {
                "peak_rss_mib": peak_mib,
                "seconds": summary["seconds"],
                "images_per_second": summary["images_per_second"],
                "num_encoded": summary["num_encoded"],
                "num_rows": summary["num_rows"],
                "encoded_this_run": summary["encoded_this_run"],
                "reused_shards": summary["reused_shards"],
            }
        ),
        flush=True,
    )


def child_command(
    args: argparse.Namespace, dataset: str, output_dir: str, max_examples: int | None = None
) -> list[str]:
    return [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--dataset",
        dataset,
        "--output_dir",
        output_dir,
        "--checkpoint",
        args.checkpoint,
        "--shard_size",
        str(args.shard_size),
        "--batch_size",
        str(args.batch_size),
        "--num_workers",
        str(args.num_workers),
        *(["--max_examples", str(max_examples)] if max_examples else []),
    ]


def run_child(command: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"encode child failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def rows(output_dir: str) -> list[tuple]:
    from rlhf_img.upstream.shards import open_encoded

    dataset = open_encoded(output_dir)
    return list(zip(dataset["key"], dataset["caption"], map(tuple, dataset["actions"])))


def kill_check(args: argparse.Namespace, dataset: str, reference_dir: str, workdir: str, count: int) -> dict:
    """SIGKILL an encode of `dataset` after half its shards, rerun it, compare with `reference_dir`."""
    output_dir = os.path.join(workdir, "killed")
    num_shards = -(-count // args.shard_size)
    target = os.path.join(output_dir, "shards", f"shard-{num_shards // 2 - 1:05d}.arrow")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(os.path.join(workdir, "killed.log"), "w") as log:
        process = subprocess.Popen(
            child_command(args, dataset, output_dir), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
        while not os.path.exists(target) and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    shards_dir = os.path.join(output_dir, "shards")
    finished = sum(name.endswith(".arrow") for name in os.listdir(shards_dir))
    temporary = [name for name in os.listdir(shards_dir) if ".tmp" in name]
    rerun = run_child(child_command(args, dataset, output_dir))
    after, reference = rows(output_dir), rows(reference_dir)
    keys = [key for key, *_ in after]
    return {
        "killed_by_sigkill": process.returncode == -signal.SIGKILL,
        "shards_finished_at_kill": finished,
        "num_shards": num_shards,
        "temporary_files_at_kill": len(temporary),
        "rerun_encoded": rerun["encoded_this_run"],
        "rerun_reused_shards": rerun["reused_shards"],
        "rerun_seconds": rerun["seconds"],
        "rows": len(after),
        "unique_keys": len(set(keys)),
        "equals_uninterrupted_run": after == reference,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000", help="comma-separated numbers of pairs, one folder each")
    parser.add_argument("--checkpoint", default=os.path.join(REPO, "checkpoints", "shapes-tiny"))
    parser.add_argument("--source_size", type=int, default=32, help="side of the written images (32: native)")
    parser.add_argument("--format", default="png", choices=["png", "jpg", "webp"])
    parser.add_argument("--shard_size", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument(
        "--kill_check", action="store_true", help="also kill an encode of the largest set midway and rerun it"
    )
    parser.add_argument("--workdir", default=None, help="where images and outputs go (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    parser.add_argument("--max_examples", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return None
    sizes = [int(size) for size in args.sizes.split(",")]
    workdir = args.workdir or tempfile.mkdtemp(prefix="encode-bench-")
    results, baseline = [], None
    for size in sizes:
        folder = os.path.join(workdir, f"pairs-{size}")
        start = time.perf_counter()
        render_folder(folder, size, args.source_size, args.format)
        print(f"rendered {size} pairs in {time.perf_counter() - start:.1f}s -> {folder}", flush=True)
        if baseline is None:  # the process with torch, the libraries and the model loaded, one pair encoded
            baseline = run_child(child_command(args, folder, os.path.join(workdir, "encoded-baseline"), 1))
        result = run_child(child_command(args, folder, os.path.join(workdir, f"encoded-{size}")))
        results.append({"pairs": size, **result})
        print(
            f"{size} pairs: peak RSS {result['peak_rss_mib']:.0f} MiB, {result['images_per_second']:.0f} images/s",
            flush=True,
        )
    first, last = results[0], results[-1]
    figures = {
        "source": f"{args.source_size}x{args.source_size} {args.format}",
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "runs": results,
        "baseline_peak_rss_mib": baseline["peak_rss_mib"],
        "peak_rss_ratio": last["peak_rss_mib"] / first["peak_rss_mib"],
        "throughput_ratio": last["images_per_second"] / first["images_per_second"],
    }
    print(
        f"\nsource images {figures['source']}, shard_size {args.shard_size}, batch {args.batch_size}, "
        f"{args.num_workers} loader threads, CPU"
    )
    print(f"{'pairs':>7} {'peak RSS MiB':>13} {'above 1 pair':>13} {'images/s':>9} {'seconds':>8}")
    print(f"{1:>7} {baseline['peak_rss_mib']:>13.0f} {0:>13.0f} {'':>9} {'':>8}")
    for result in results:
        print(
            f"{result['pairs']:>7} {result['peak_rss_mib']:>13.0f} "
            f"{result['peak_rss_mib'] - baseline['peak_rss_mib']:>13.0f} {result['images_per_second']:>9.0f} "
            f"{result['seconds']:>8.1f}"
        )
    print(
        f"{last['pairs']}/{first['pairs']} ratio: peak RSS x{figures['peak_rss_ratio']:.3f}, "
        f"images/s x{figures['throughput_ratio']:.2f}"
    )
    if args.kill_check:
        check = kill_check(
            args,
            os.path.join(workdir, f"pairs-{last['pairs']}"),
            os.path.join(workdir, f"encoded-{last['pairs']}"),
            workdir,
            last["pairs"],
        )
        figures["kill_check"] = check
        print(
            f"kill check on {last['pairs']} pairs: SIGKILL after {check['shards_finished_at_kill']} of "
            f"{check['num_shards']} shards ({check['temporary_files_at_kill']} half-written file left); rerun kept "
            f"{check['rerun_reused_shards']} and encoded {check['rerun_encoded']} pairs in "
            f"{check['rerun_seconds']:.1f}s; {check['rows']} rows, {check['unique_keys']} unique keys, equal to the "
            f"uninterrupted run: {check['equals_uninterrupted_run']}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    main()
