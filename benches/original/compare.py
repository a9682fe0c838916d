#!/usr/bin/env python3
"""Time the original STA-IPCon (PyTorch) and `xca bench` side by side, on one machine, in
one run, and print the ratios.

Both sides time the same pieces on the same kind of synthetic batch (paper configuration,
batch 2, T = 128, features uniform in [0, 1), one filling and one washout segment per
video at the same positions):

- training iteration: the body of the original's `train_one_epoch` (zero_grad, forward with
  the losses at an epoch where the contrastive term is on, backward, gradient clipping,
  AdamW, scheduler, EMA) against `xca bench`'s `train_step_ms`;
- inference, T = 128: network + decode + soft-NMS of one video (the original's
  `forward` in eval mode, which returns before its keyframe bookkeeping for a video id
  containing "video") against `xca bench`'s `infer_ms_t128`;
- peak resident memory after the training iterations (`ru_maxrss`) against
  `peak_rss_mb_train`.

Rounds alternate the original and xca, each in a fresh process, so that both see the same
state of a shared machine. Nothing is fetched: see README.md beside this file for how to get
the original's code and torch. The original's checkout is left untouched; a copy with the
two patches current torch needs is made under --work.

Usage:
    python3 benches/original/compare.py --original PATH/TO/STA-IPCon [--xca target/release/xca]
        [--rounds 2] [--iters 3] [--threads 2] [--json OUT.json]
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# The two changes the original needs on current torch, as (file, old text, new text); each
# old text must occur exactly once. 1: the random-patch conv writes each video's output back
# into the tensor whose view the conv saved for its backward (an in-place error on current
# torch), so the conv reads a copy. 2: the random-patch conv is created with `.cuda()`; it follows its input instead.
PATCHES = [
    (
        "libs/modeling/blocks.py",
        "feats = video_list[i].reshape(64, 64, -1)",
        "feats = video_list[i].clone().reshape(64, 64, -1)",
    ),
    (
        "libs/modeling/blocks.py",
        "padding=(2, 2)).cuda()",
        "padding=(2, 2)).to(video_list.device)",
    ),
]


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def prepare_original(src: Path, work: Path) -> Path:
    """A patched copy of the original checkout, with its NMS extension built."""
    dest = work / "original"
    if not (dest / ".xca-patched").exists():
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git", "ckpt", "data"))
        for rel, old, new in PATCHES:
            path = dest / rel
            text = path.read_text()
            if text.count(old) != 1:
                sys.exit(f"compare.py: {rel}: expected the text {old!r} once, found it "
                         f"{text.count(old)} times (another version of the original?)")
            path.write_text(text.replace(old, new))
        (dest / ".xca-patched").write_text("\n".join(f"{r}: {o} -> {n}" for r, o, n in PATCHES))
    utils = dest / "libs" / "utils"
    if not any(utils.glob("nms_1d_cpu*.so")):
        print("compare.py: building the original's NMS extension (nms_1d_cpu) ...", file=sys.stderr)
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=utils, check=True,
                       stdout=subprocess.DEVNULL)
    return dest


# --------------------------------------------------------------------------------------
# The original's side, run in a fresh process (`--worker`).

def worker(args):
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    orig = Path(args.worker)
    sys.path.insert(0, str(orig))
    sys.path.insert(0, str(orig / "libs" / "utils"))  # nms_1d_cpu, built in place
    os.chdir(orig)
    from libs.core import load_config
    from libs.modeling import make_meta_arch
    from libs.utils import ModelEma, fix_random_seed, make_optimizer, make_scheduler

    cfg = load_config(str(orig / "configs" / "vessel_SpTeAttenRPCon.yaml"))
    fix_random_seed(cfg["init_rand_seed"], include_cuda=False)
    cfg["model"]["train_cfg"]["head_empty_cls"] = []  # what the vessel dataset reports
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    optimizer = make_optimizer(model, cfg["opt"])
    scheduler = make_scheduler(optimizer, cfg["opt"], 96, model=cfg["model"])
    model_ema = ModelEma(model)

    t_len = cfg["dataset"]["max_seq_len"]
    dim = cfg["dataset"]["input_dim"]
    rng = np.random.default_rng(1)

    def video(i, vid):
        # One segment per class over the middle of the window, as `xca bench` builds it.
        segs = [[(0.15 + 0.1 * (c + i)) * t_len, (0.15 + 0.1 * (c + i)) * t_len + 0.35 * t_len] for c in range(2)]
        return {
            "video_id": vid,
            "feats": torch.from_numpy(rng.random((dim, t_len), dtype=np.float32)),
            "segments": torch.tensor(segs, dtype=torch.float32),
            "labels": torch.tensor([0, 1], dtype=torch.int64),
            "fps": 15.0,
            "duration": t_len * 4 / 15.0,
            "feat_stride": 4,
            "feat_num_frames": 4,
        }

    batch = [video(i, f"train_bench_{i}") for i in range(cfg["loader"]["batch_size"])]
    epoch = 10  # the contrastive term is on from epoch 10 (pretrain + random_patch)
    clip = cfg["train_cfg"]["clip_grad_l2norm"]

    def train_iter():
        optimizer.zero_grad(set_to_none=True)
        losses = model(batch, epoch)
        losses["final_loss"].backward()
        if clip > 0.0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        model_ema.update(model)
        return losses["final_loss"].item()

    model.train()
    train_ms = []
    for k in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        train_iter()
        if k >= args.warmup:
            train_ms.append(1e3 * (time.perf_counter() - t0))
    peak_train_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    # Inference of one video with the EMA weights, as eval.py runs it (the id contains
    # "video", so forward returns right after decode + NMS).
    net = model_ema.module
    net.eval()
    one = [video(0, "video_bench")]
    infer_ms, fwd_ms = [], []
    with torch.no_grad():
        for k in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            net(one)
            if k >= args.warmup:
                infer_ms.append(1e3 * (time.perf_counter() - t0))
        # The network alone (backbone, neck, heads), for reference.
        for k in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            x, m = net.preprocessing(one)
            feats, masks, _, _ = net.backbone(x, m)
            f, fm = net.neck(feats, masks)
            net.cls_head(f, fm)
            net.reg_head(f, fm)
            if k >= args.warmup:
                fwd_ms.append(1e3 * (time.perf_counter() - t0))
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_step_ms": train_ms,
        "infer_ms_t128": infer_ms,
        "forward_ms_t128": fwd_ms,
        "peak_rss_mb_train": peak_train_mb,
    }))


# --------------------------------------------------------------------------------------
# The driver.

def run_original(orig: Path, args):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(orig), "--iters", str(args.iters),
         "--warmup", str(args.warmup), "--threads", str(args.threads)],
        env=env, check=True, stdout=subprocess.PIPE, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_xca(args, work: Path):
    out = work / "xca_bench.json"
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    subprocess.run(
        [args.xca, "bench", str(REPO / "configs" / "vessel.yaml"), "--iters", str(args.iters),
         "--warmup", str(args.warmup), "--long-t", "0", "--json", str(out)],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )
    v = json.loads(out.read_text())
    return {
        "train_step_ms": v["train_step_ms"]["median"],
        "infer_ms_t128": v["infer_ms_t128"]["median"],
        "peak_rss_mb_train": v["peak_rss_mb_train"],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original", type=Path, help="checkout of the original STA-IPCon")
    p.add_argument("--xca", default=str(REPO / "target" / "release" / "xca"), help="the xca binary")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (original, xca)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per piece and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=2, help="threads of both (torch, rayon)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "xca-original-bench",
                   help="where the patched copy of the original goes")
    p.add_argument("--json", type=Path, help="also write every number here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.original is None or not (args.original / "libs" / "modeling").is_dir():
        sys.exit("compare.py: --original must be a checkout of the original STA-IPCon (see README.md)")
    if not Path(args.xca).is_file():
        sys.exit(f"compare.py: no xca binary at {args.xca}: run `cargo build --release` first")
    args.work.mkdir(parents=True, exist_ok=True)
    orig = prepare_original(args.original.resolve(), args.work)

    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: original ...", file=sys.stderr)
        o = run_original(orig, args)
        print(f"round {r + 1}/{args.rounds}: xca ...", file=sys.stderr)
        x = run_xca(args, args.work)
        rounds.append({"original": o, "xca": x})

    med = statistics.median
    o_train = med([med(r["original"]["train_step_ms"]) for r in rounds])
    o_infer = med([med(r["original"]["infer_ms_t128"]) for r in rounds])
    o_fwd = med([med(r["original"]["forward_ms_t128"]) for r in rounds])
    o_mem = max(r["original"]["peak_rss_mb_train"] for r in rounds)
    x_train = med([r["xca"]["train_step_ms"] for r in rounds])
    x_infer = med([r["xca"]["infer_ms_t128"] for r in rounds])
    x_mem = max(r["xca"]["peak_rss_mb_train"] for r in rounds)
    torch_v = rounds[0]["original"]["torch"]
    print(f"\n{cpu_model()}, {os.cpu_count()} cores visible, {args.threads} threads each; "
          f"torch {torch_v}; {args.rounds} alternating rounds of {args.iters} timed iterations "
          f"(medians)\n")
    print("| piece | original | xca | ratio |")
    print("|---|---|---|---|")
    print(f"| training iteration | {o_train:.0f} ms | {x_train:.0f} ms | {o_train / x_train:.2f}× faster |")
    print(f"| inference T = 128 (network + decode + soft-NMS) | {o_infer:.0f} ms (network alone {o_fwd:.0f}) "
          f"| {x_infer:.0f} ms | {o_infer / x_infer:.2f}× faster |")
    print(f"| peak memory, training | {o_mem:.0f} MB | {x_mem:.0f} MB | {o_mem / x_mem:.2f}× less |")
    for r, v in enumerate(rounds):
        print(f"round {r + 1}: original train {[round(t) for t in v['original']['train_step_ms']]} ms, "
              f"infer {[round(t) for t in v['original']['infer_ms_t128']]} ms; xca train "
              f"{v['xca']['train_step_ms']:.0f} ms, infer {v['xca']['infer_ms_t128']:.0f} ms (medians)")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "threads": args.threads, "torch": torch_v,
                                         "rounds": rounds}, indent=1) + "\n")


if __name__ == "__main__":
    main()
