"""`deepspeed --num_gpus 1 pretrain/run.py` at ZeRO 0/1/2 against engine.kind=torch, preemption + resume, export check.

Everything goes through the user's entry points: `vmr synth` + `vmr shards` make 224 px synthetic shards,
`pretrain/run.py` trains (through the `deepspeed` launcher, or plain `python` for engine.kind=torch) with the
given config plus a few overrides (shards, a random-weight open_clip teacher file, steps), and the comparison
reads each run's steps.jsonl (loss, lr, sample keys, data wait, step time, peak memory). Then:
- preemption: the same DeepSpeed run again, SIGTERM to its process group (what `timeout` and SLURM do) once
  step K is logged, `--resume auto` to the end; its steps must repeat the uninterrupted run's (same lr and
  sample keys exactly, loss within the run-to-run noise that the same segment before the kill shows);
- export: the resumed run's RUN/model through `vmr eval` on the GPU and on the CPU (and `vmr index build` where
  FAISS is installed); the embeddings are written to OUT/export_embeddings.npz and compared;
- FLOPs per sample of one train step (torch.utils.flop_counter: matmuls, convs, attention, not the selective
  scan) and a bf16 matmul peak for an MFU lower bound.
Phases that would overrun --budget-s are skipped and listed in results.json.

    python benchmarks/bench_deepspeed_gpu.py --out OUT                  # the GPU run (see bench_deepspeed_gpu.sh)
    python benchmarks/bench_deepspeed_gpu.py --quick --out /tmp/dsq     # CPU check of this script (gloo, tiny model)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"torch": [], "zero0": ["engine.zero_stage=0"], "zero1": ["engine.zero_stage=1"],
           "zero2": ["engine.zero_stage=2"],
           # ZeRO-1 with fp32 gradient accumulation: DeepSpeed 0.19 then wraps the optimizer in BF16_Optimizer (flat
           # fp32 buffers) instead of its ZeRO optimizer; CPU op counts say ~29k ops a step against ~50k (BENCHMARKS)
           "zero1_fp32acc": ["engine.zero_stage=1", "engine.deepspeed_config={work}/zero1_bf16_fp32acc.json"],
           # DeepSpeed's torch_autocast: fp32 weights + torch AdamW unwrapped, the torch engine's numerics
           "zero0_autocast": ["engine.zero_stage=0", "engine.deepspeed_config=configs/deepspeed/zero0_autocast.json"]}
CONFIGS = {"tiny": "configs/pretrain/tiny_1gpu.yaml", "small": "configs/pretrain/small_1gpu.yaml"}
# --quick: a CPU-sized model and world (the teacher is the smallest open_clip ViT at 32 px)
QUICK_MODEL = ['model.video.encoder={depth: 2, embed_dim: 64, img_size: 32, num_frames: 4}',
               'model.text={layers: 2, width: 64, heads: 2, context_length: 24}', "model.embed_dim=64",
               "teacher.open_clip_model=ViT-S-16", "teacher.image_size=32"]


class Driver:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.results: dict = {"args": vars(args), "info": {}, "phases": {}, "runs": {}, "checks": {}, "skipped": []}
        self.steps: dict[str, list[dict]] = {}
        self.port = 29500 + (os.getpid() % 1000)
        self.env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))
        (self.out / "steps.json").write_text(json.dumps(self.steps))

    def log(self, msg: str) -> None:
        print(f"[bench {time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def phase(self, name: str, fn, *a, need_s: float = 0.0):
        """Run one phase unless fewer than need_s seconds are left; a failure is recorded, not raised."""
        if self.left() < need_s:
            self.log(f"SKIP {name}: {self.left():.0f} s left, needs ~{need_s:.0f}")
            self.results["skipped"].append({"phase": name, "left_s": round(self.left()), "need_s": round(need_s)})
            self.save()
            return None
        t = time.monotonic()
        self.log(f"== {name}")
        try:
            value = fn(*a)
            status = "ok"
        except Exception as e:  # noqa: BLE001 - one broken phase must not cost the rest of the device call
            import traceback

            traceback.print_exc()
            value, status = None, f"{type(e).__name__}: {e}"
        self.results["phases"][name] = {"status": status, "seconds": round(time.monotonic() - t, 1)}
        self.save()
        return value

    def sh(self, cmd: list[str], env: dict | None = None, timeout: float | None = None,
           **kw) -> subprocess.CompletedProcess:
        self.log("$ " + " ".join(cmd))
        return subprocess.run(cmd, cwd=ROOT, env=env or self.env, timeout=timeout or max(30.0, self.left() + 30),
                              check=True, **kw)

    # -- phases -----------------------------------------------------------------------------------------------
    def info(self) -> None:
        import platform

        import torch

        info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
                "date": time.strftime("%Y-%m-%d")}
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda_runtime"] = torch.version.cuda
        try:
            import deepspeed

            info["deepspeed"] = deepspeed.__version__
        except Exception as e:  # noqa: BLE001
            info["deepspeed"] = f"not importable: {e}"
        info["scan_backend"] = self.scan_backend()
        self.env["VMR_SCAN_BACKEND"] = info["scan_backend"]  # explicit: a broken kernel then fails, never falls back
        self.results["info"] = info
        self.log(json.dumps(info))

    def scan_backend(self) -> str:
        """'cuda' when mamba-ssm's kernels import and match the reference (fwd fp32 + bf16, bwd bf16), else 'torch'."""
        import torch

        if not torch.cuda.is_available():
            return "torch"
        code = """
import torch
from retrieval.selective_scan import selective_scan_fn, selective_scan_ref
g = torch.Generator(device="cuda").manual_seed(0)
B, D, N, L = 2, 64, 16, 300
for dt in (torch.float32, torch.bfloat16):
    t = [torch.randn(*s, device="cuda", generator=g) for s in ((B, D, L),) * 3 + ((B, N, L),) * 2]
    A = -torch.rand(D, N, device="cuda", generator=g) - 0.5
    Dv, bias = torch.randn(D, device="cuda", generator=g), torch.randn(D, device="cuda", generator=g)
    u, delta, z, Bm, C = (x.to(dt).requires_grad_() for x in t)
    y = selective_scan_fn(u, delta, A, Bm, C, Dv, z, bias, True, backend="cuda")
    u64, d64, z64, B64, C64 = (x.detach().double().requires_grad_() for x in (u, delta, z, Bm, C))
    ref = selective_scan_ref(u64, d64, A.double(), B64, C64, Dv.double(), z64, bias.double(), True)
    err = ((y.double() - ref).norm() / ref.norm()).item()
    y.float().square().sum().backward()
    ref.square().sum().backward()
    gerr = ((u.grad.double() - u64.grad).norm() / u64.grad.norm()).item()
    print("cuda scan", dt, "fwd rel err", err, "bwd (du) rel err", gerr)
    assert err < 3e-2 and gerr < 6e-2, (dt, err, gerr)
"""
        try:
            self.sh([sys.executable, "-c", code], timeout=120)
            return "cuda"
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            self.log(f"mamba-ssm kernels unusable here ({e}); using the torch scan backend")
            return "torch"

    def data(self) -> None:
        a, cli = self.args, [sys.executable, "-m", "app.cli"]
        size, frames = (48, 8) if a.quick else (224, 16)
        w = str(a.cpu_workers)
        synth, shards, val = self.work / "synth_train", self.work / "shards", self.work / "synth_val"
        if not (shards / "report.json").is_file():
            self.sh(cli + ["synth", "--out", str(synth), "--videos", str(a.videos), "--split", "train", "--size",
                           str(size), "--frames", str(frames), "--workers", w])
            self.sh(cli + ["shards", "--anno", str(synth / "annotations.json"), "--videos", str(synth / "videos"),
                           "--out", str(shards), "--shard-size", str(a.shard_size), "--workers", w, "--quiet"])
        if not (val / "annotations.json").is_file():
            self.sh(cli + ["synth", "--out", str(val), "--videos", str(a.val_videos), "--split", "test", "--size",
                           str(size), "--frames", str(frames), "--workers", w])
        n = len(list(shards.glob("shard-*.tar")))
        self.shard_urls = f"{shards}/shard-{{000000..{n - 1:06d}}}.tar"
        self.val = val
        self.results["info"]["data"] = {"train_videos": a.videos, "val_videos": a.val_videos, "size": size,
                                        "frames": frames, "shards": n, "urls": self.shard_urls}

    def teacher(self) -> None:
        """A random-weight open_clip checkpoint file: the real teacher's shape and cost (no weights can be fetched)."""
        import torch

        name = "ViT-S-16" if self.args.quick else "ViT-B-16"
        path = self.work / f"teacher_{name}_random.pt"
        if not path.is_file():
            import open_clip

            torch.manual_seed(0)
            model = open_clip.create_model(name, pretrained=None)
            torch.save(model.state_dict(), path)
        self.teacher_path = path

    def steps_for(self, size: str) -> int:
        """The first size gets --steps (loss curves); later ones --more-steps (throughput only)."""
        return self.args.steps if size == self.args.sizes.split(",")[0] else self.args.more_steps

    def overrides(self, size: str) -> list[str]:
        a = self.args
        o = [f'data.sources=[{{urls: "{self.shard_urls}", name: synth}}]', f"data.batch_size={a.batch}",
             f"data.num_workers={a.loader_workers}", "data.flip=false", f"teacher.checkpoint={self.teacher_path}",
             "val.anno=null", f"run.max_steps={self.steps_for(size)}", "run.ckpt_every=0", "run.log_every=10",
             "run.progress=false", "run.seed=0"]
        if a.quick:
            o += QUICK_MODEL + ["data.shuffle_buffer=16"]
        return o

    def command(self, size: str, engine: str, run_dir: Path, extra: list[str] = ()) -> list[str]:
        kind = "engine.kind=torch" if engine == "torch" else "engine.kind=deepspeed"
        if engine == "zero1_fp32acc":
            ds = json.loads((ROOT / "configs" / "deepspeed" / "zero1_bf16.json").read_text())
            ds["data_types"] = {"grad_accum_dtype": "fp32"}
            (self.work / "zero1_bf16_fp32acc.json").write_text(json.dumps(ds))
        engine_args = [a.format(work=self.work) for a in ENGINES[engine]]
        cfg = ["--config", CONFIGS[size], "--out", str(run_dir), *self.overrides(size), *engine_args, kind, *extra]
        if engine == "torch":
            return [sys.executable, "pretrain/run.py", *cfg]
        self.port += 1
        return ["deepspeed", "--num_gpus", "1", "--master_port", str(self.port), "pretrain/run.py", *cfg]

    def read_steps(self, run_dir: Path) -> list[dict]:
        f = run_dir / "steps.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []

    def summarise(self, name: str, run_dir: Path, wall: float) -> dict:
        rows = self.read_steps(run_dir)
        keep = ("step", "epoch", "lr", "loss", "vtc", "mvm", "temp", "keys_sha1", "data_time", "step_time",
                "gpu_mem_gb")
        self.steps[name] = [{k: r[k] for k in keep if k in r} for r in rows]
        timed = rows[self.args.skip_steps:]
        s = {"steps": len(rows), "wall_s": round(wall, 1)}
        if timed:
            st = [r["step_time"] for r in timed]
            dt = [r["data_time"] for r in timed]
            s.update(step_ms_median=1e3 * statistics.median(st), step_ms_mean=1e3 * statistics.mean(st),
                     samples_per_s=self.args.batch / statistics.median(st),
                     samples_per_s_mean=self.args.batch / statistics.mean(st),
                     data_wait_pct=100 * sum(dt) / sum(st), data_wait_ms_median=1e3 * statistics.median(dt),
                     timed_steps=len(timed))
        mem = [r["gpu_mem_gb"] for r in rows if r.get("gpu_mem_gb") is not None]
        s["peak_gb"] = max(mem) if mem else None
        last = rows[-20:]
        s["loss_last20"] = statistics.mean(r["loss"] for r in last) if last else None
        summary = run_dir / "summary.json"
        if summary.is_file():
            s["summary"] = json.loads(summary.read_text())
        return s

    def train(self, size: str, engine: str) -> dict:
        name = f"{size}_{engine}"
        run_dir = self.work / "runs" / name
        t = time.monotonic()
        self.sh(self.command(size, engine, run_dir))
        s = self.summarise(name, run_dir, time.monotonic() - t)
        self.results["runs"][name] = s
        self.log(f"{name}: " + json.dumps({k: v for k, v in s.items() if k != 'summary'}))
        return s

    def preempt_and_resume(self, size: str, engine: str) -> None:
        """SIGTERM the launcher's process group once step K is logged, then `--resume auto` to the end."""
        name = f"{size}_{engine}"
        run_dir = self.work / "runs" / f"{name}_preempted"
        k = self.args.kill_at
        cmd = self.command(size, engine, run_dir)
        t = time.monotonic()
        self.log("$ " + " ".join(cmd) + f"   (SIGTERM to the group after step {k})")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, start_new_session=True)
        while len(self.read_steps(run_dir)) < k:
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended (rc {proc.returncode}) before step {k}")
            if self.left() < 0:
                os.killpg(proc.pid, signal.SIGKILL)
                raise TimeoutError("out of time before the kill step")
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        t_kill = time.monotonic()
        rc = proc.wait(timeout=180)
        launcher_s = time.monotonic() - t_kill
        # The `deepspeed` runner dies at once (it has no SIGTERM handler on one node); the ranks finish their step
        # and checkpoint after it has returned. Wait for the whole group, as SLURM does.
        while time.monotonic() - t_kill < 180:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        stop_s = time.monotonic() - t_kill
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
        latest = (run_dir / "checkpoints" / "latest")
        check = {"engine": engine, "kill_after_step": k, "launcher_rc": rc, "launcher_exit_s": round(launcher_s, 2),
                 "group_exit_s": round(stop_s, 1),
                 "stopped_summary": summary, "latest": latest.read_text().strip() if latest.is_file() else None,
                 "model_written_before_resume": (run_dir / "model").exists()}
        self.log("preempted: " + json.dumps(check))
        self.results["checks"]["resume"] = check
        self.save()
        self.sh(self.command(size, engine, run_dir, ["--resume", "auto"]))
        s = self.summarise(f"{name}_resumed", run_dir, time.monotonic() - t)
        self.results["runs"][f"{name}_resumed"] = s
        check.update(self.compare_resume(name, f"{name}_resumed", summary.get("step")))
        self.resumed_model = run_dir / "model"
        self.log("resume check: " + json.dumps({k: v for k, v in check.items() if k != "stopped_summary"}))

    def compare_resume(self, ref: str, res: str, stop_step: int | None) -> dict:
        a = {r["step"]: r for r in self.steps.get(ref, [])}
        b = {r["step"]: r for r in self.steps.get(res, [])}
        if not a or not b or stop_step is None:
            return {"passed": False, "why": "missing steps"}
        after = [s for s in sorted(b) if s > stop_step]
        before = [s for s in sorted(b) if s <= stop_step]
        same_keys = all(a.get(s, {}).get("keys_sha1") == b[s]["keys_sha1"] for s in b)
        same_lr = all(abs(a[s]["lr"] - b[s]["lr"]) <= 1e-12 * max(1.0, abs(a[s]["lr"])) for s in b if s in a)

        def dev(steps):
            d = [abs(a[s]["loss"] - b[s]["loss"]) for s in steps if s in a]
            return (statistics.mean(d), max(d)) if d else (None, None)

        pre_mean, pre_max = dev(before)
        post_mean, post_max = dev(after)
        out = {"steps_logged": sorted(b) == list(range(1, max(b) + 1)), "last_step": max(b),
               "reference_last_step": max(a), "same_sample_keys_every_step": same_keys,
               "same_lr_every_step": same_lr, "loss_absdiff_before_kill_mean_max": [pre_mean, pre_max],
               "loss_absdiff_after_resume_mean_max": [post_mean, post_max]}
        # continuation within noise: the resumed segment differs from the uninterrupted run no more than the
        # pre-kill segment (same engine, same data, only run-to-run nondeterminism) does, with a 2x margin
        noise = max(pre_mean or 0.0, 1e-3)
        out["passed"] = bool(out["steps_logged"] and max(b) == max(a) and same_keys and same_lr
                             and post_mean is not None and post_mean <= 2 * noise)
        return out

    def export_check(self) -> None:
        import numpy as np

        model = getattr(self, "resumed_model", None)
        if model is None or not model.is_dir():
            raise RuntimeError("no exported model (from the resumed run or --export-from)")
        cli = [sys.executable, "-m", "app.cli"]
        anno, videos = str(self.val / "annotations.json"), str(self.val / "videos")
        cpu_env = dict(self.env, CUDA_VISIBLE_DEVICES="", VMR_SCAN_BACKEND="auto")  # the GPU runs pin "cuda"
        out, arrays = {}, {}
        devices = [("cuda", self.env), ("cpu", cpu_env)] if not self.args.quick else [("cpu", cpu_env)]
        try:
            import faiss  # noqa: F401 - the GPU machine has none (too big to carry): index build is then skipped
            index_ok = True
        except ImportError:
            index_ok = False
            out["index_build"] = "skipped: faiss is not installed here"
        for dev, env in devices:
            t = time.monotonic()
            cache, report = self.work / f"evalcache_{dev}", self.work / f"eval_{dev}.json"
            self.sh(cli + ["eval", "--dataset", "generic", "--anno", anno, "--videos", videos, "--model", str(model),
                           "--device", dev, "--cache-dir", str(cache), "--out", str(report), "--no-progress",
                           "--workers", "4"], env=env)
            rep = json.loads(report.read_text())
            with np.load(next(cache.rglob("cache.npz"))) as c:  # evaluation's embedding cache
                idx, emb, texts = json.loads(c["index"].tobytes())["videos"], c["videos"], c["texts"]
            order = sorted(idx)
            arrays[f"eval_video_{dev}"] = np.stack([emb[idx[k]["row"]] for k in order])
            arrays[f"eval_text_{dev}"] = texts
            out[dev] = {"t2v": rep.get("t2v"), "v2t": rep.get("v2t"), "seconds": round(time.monotonic() - t, 1)}
            np.savez_compressed(self.out / "export_embeddings.npz", **arrays)
            self.results["checks"]["export"] = out
            self.save()
        for dev, env in devices if index_ok else []:
            self.sh(cli + ["index", "build", "--videos", videos, "--model", str(model),
                           "--out", str(self.work / f"index_{dev}"), "--device", dev,
                           "--no-progress", "--workers", "4"], env=env)
            arrays[f"index_{dev}"] = self.index_rows(self.work / f"index_{dev}")
        np.savez_compressed(self.out / "export_embeddings.npz", **arrays)
        if "cuda" in out:
            for what in ("eval_video", "eval_text", "index")[:3 if index_ok else 2]:
                g, c = arrays[f"{what}_cuda"].astype(np.float64), arrays[f"{what}_cpu"].astype(np.float64)
                cos = (g * c).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(c, axis=1)
                out[f"{what}_min_cosine"] = float(cos.min())
                out[f"{what}_max_abs_diff"] = float(np.abs(g - c).max())
            out["same_t2v_r1"] = out["cuda"]["t2v"]["R1"] == out["cpu"]["t2v"]["R1"]
        self.results["checks"]["export"] = out
        self.log("export check: " + json.dumps(out))

    @staticmethod
    def index_rows(index_dir: Path):
        """The index's embeddings in (file, start) order, from its SQLite rows and shard files."""
        import sqlite3

        import numpy as np

        db = sqlite3.connect(index_dir / "index.sqlite")
        rows = db.execute("SELECT r.path, r.start, s.shard, s.row FROM segment_rows r JOIN segments s ON s.id = r.id "
                          "ORDER BY r.path, r.start").fetchall()
        db.close()
        shards: dict = {}
        out = []
        for _path, _start, shard, row in rows:
            if shard not in shards:
                shards[shard] = np.load(index_dir / "shards" / shard)
            out.append(shards[shard][row])
        return np.stack(out).astype(np.float32)

    def flops(self, size: str) -> None:
        """GFLOP per sample of one train step (batch --batch) and a bf16 matmul peak: the MFU lower bound."""
        import torch

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from bench_train import build, count_flops, matmul_peak_tflops, synthetic_batch, train_config

        from pretrain.distributed import DistInfo

        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cuda":
            torch.cuda.set_device(0)
        os.environ["VMR_SCAN_BACKEND"] = self.env.get("VMR_SCAN_BACKEND", "auto")
        cfg = train_config(size, True, self.args.batch, self.args.quick, grad_ckpt=size == "small")
        engine, teacher, grid = build(cfg, DistInfo(device=dev), "standin" if self.args.quick else "openclip")
        batch = synthetic_batch(cfg, engine.module.model.tokenizer, dev)
        flops = count_flops(engine, teacher, cfg, batch, grid)
        peak = matmul_peak_tflops(dev, 8192 if dev.type == "cuda" else 512, reps=10 if dev.type == "cuda" else 2)
        self.results["info"].setdefault("flops", {})[size] = {"gflop_per_sample": flops / self.args.batch / 1e9}
        self.results["info"]["matmul_peak_tflops_bf16"] = peak
        del engine, teacher
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    def report(self) -> None:
        """Ratios against the torch engine of the same model, loss agreement, MFU lower bounds; a Markdown table."""
        r = self.results
        peak = r["info"].get("matmul_peak_tflops_bf16")
        lines = ["| model | engine | samples/s (median step) | vs torch | samples/s (mean step) | peak GB | "
                 "data wait % | MFU % (lower bound) | loss, last 20 steps | mean abs loss diff vs torch |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for name, s in r["runs"].items():
            size, engine = name.split("_", 1)
            base = r["runs"].get(f"{size}_torch", {})
            if "samples_per_s" not in s:
                continue
            ratio = s["samples_per_s"] / base["samples_per_s"] if base.get("samples_per_s") else None
            s["ratio_vs_torch"] = ratio
            gf = r["info"].get("flops", {}).get(size, {}).get("gflop_per_sample")
            s["mfu_pct"] = 100 * gf * s["samples_per_s"] / 1e3 / peak if gf and peak else None
            a = {x["step"]: x["loss"] for x in self.steps.get(f"{size}_torch", [])}
            b = {x["step"]: x["loss"] for x in self.steps.get(name, [])}
            common = [k for k in b if k in a]
            s["loss_absdiff_vs_torch"] = statistics.mean(abs(a[k] - b[k]) for k in common) if common else None

            def f(x, spec=".1f"):
                return "-" if x is None else format(x, spec)
            lines.append(f"| {size} | {engine} | {f(s['samples_per_s'])} | {f(ratio, '.3f')} | "
                         f"{f(s['samples_per_s_mean'])} | {f(s['peak_gb'], '.2f')} | {f(s['data_wait_pct'], '.2f')} | "
                         f"{f(s['mfu_pct'], '.2f')} | {f(s['loss_last20'], '.4f')} | "
                         f"{f(s['loss_absdiff_vs_torch'], '.4f')} |")
        r["markdown"] = "\n".join(lines)
        self.save()
        print(r["markdown"], flush=True)

    def main(self) -> None:
        a = self.args
        self.phase("info", self.info)
        self.phase("data", self.data)
        self.phase("teacher", self.teacher)
        if not hasattr(self, "shard_urls") or not hasattr(self, "teacher_path"):
            self.report()
            raise SystemExit("no data or teacher: nothing to train")
        per_step = 0.3 if not a.quick else 1.0  # first guesses; replaced by the first run's measurements
        overhead = 40.0
        engines = a.engines.split(",")
        for i, size in enumerate(a.sizes.split(",")):
            checks_pending = i == 0 and a.resume_engine in engines
            for engine in engines:
                # until the preemption + export checks have run, keep time for them (they come right after
                # the resume engine's own run, which is their reference)
                reserve = (2 * overhead + a.steps * per_step + 90) if checks_pending else 0.0
                n = self.steps_for(size)
                s = self.phase(f"train {size} {engine}", self.train, size, engine,
                               need_s=overhead + n * per_step * (1 if i == 0 else 1.5) + reserve)
                if s and s.get("step_ms_mean"):
                    per_step = s["step_ms_mean"] / 1e3 * 1.1
                    overhead = max(20.0, s["wall_s"] - n * s["step_ms_mean"] / 1e3)
                if checks_pending and engine == a.resume_engine:
                    checks_pending = False
                    if f"{size}_{engine}" in self.results["runs"]:
                        self.phase("preempt + resume", self.preempt_and_resume, size, engine,
                                   need_s=2 * overhead + a.steps * per_step)
                        self.phase("export check", self.export_check, need_s=60)
                if i == 0 and engine == a.export_from and f"{size}_{engine}" in self.results["runs"]:
                    self.resumed_model = self.work / "runs" / f"{size}_{engine}" / "model"
                    self.phase("export check", self.export_check, need_s=60)
            self.phase(f"flops {size}", self.flops, size, need_s=30)
        self.report()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results.json, steps.json, export_embeddings.npz")
    p.add_argument("--work", default="/tmp/vmr_ds_bench", help="data, runs, indexes (large)")
    p.add_argument("--quick", action="store_true", help="CPU check of the script: tiny model and world, gloo")
    p.add_argument("--sizes", default="tiny", help="comma list of tiny,small (configs/pretrain/<size>_1gpu.yaml)")
    p.add_argument("--engines", default="torch,zero0,zero2,zero1", help="run in this order")
    p.add_argument("--resume-engine", default="zero2", help="engine of the preemption check ('' = none)")
    p.add_argument("--export-from", default="", help="engine whose model the export check reads when the "
                   "preemption check is off (--resume-engine '')")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 120; --quick 12)")
    p.add_argument("--more-steps", type=int, default=50, help="steps per run for the sizes after the first")
    p.add_argument("--kill-at", type=int, default=None, help="SIGTERM after this step (default steps/3)")
    p.add_argument("--skip-steps", type=int, default=None, help="warm-up steps left out of the timing (default 20)")
    p.add_argument("--batch", type=int, default=None, help="per-GPU batch (default 32; --quick 8)")
    p.add_argument("--videos", type=int, default=None, help="synthetic train videos (default 2048; --quick 64)")
    p.add_argument("--val-videos", type=int, default=None, help="held-out videos for the export check (default 24)")
    p.add_argument("--shard-size", type=int, default=None)
    p.add_argument("--loader-workers", type=int, default=None, help="DataLoader workers (default 10, the config's)")
    p.add_argument("--cpu-workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--budget-s", type=float, default=520.0, help="skip phases that would end later than this")
    a = p.parse_args(argv)
    q = a.quick
    a.steps = a.steps or (12 if q else 120)
    a.kill_at = a.kill_at or max(2, a.steps // 3)
    a.skip_steps = a.skip_steps if a.skip_steps is not None else (2 if q else 20)
    a.batch = a.batch or (8 if q else 32)
    a.videos = a.videos or (64 if q else 2048)
    a.val_videos = a.val_videos or (8 if q else 24)
    a.shard_size = a.shard_size or (8 if q else 64)
    a.loader_workers = a.loader_workers if a.loader_workers is not None else (2 if q else 10)
    Driver(a).main()


if __name__ == "__main__":
    main()
