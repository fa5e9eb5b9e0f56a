"""Pack the Python packages pretraining needs on the GPU machine (no network there) into one small site.tar.xz.

The device tool carries at most 64 MiB per call, the checkout included, and PyAV (36 MB) + mamba-ssm (40 MB)
do not fit side by side as wheels. Three reductions that change nothing bf16/fp32 training runs make them fit
(PyAV + mamba-ssm + open_clip + webdataset + ftfy: 33 MiB):
- PyAV's Cython modules ship with DWARF debug info: `strip --strip-debug` shrinks them from 9.3 to 1.8 MB compressed
  (code untouched);
- mamba-ssm's selective_scan_cuda.so holds one compressed sm_90 cubin per source file (fwd x 3 input dtypes,
  bwd x 3 dtypes x real/complex): the ones bf16/fp32 training never launches (fp16, complex weights; --keep
  picks) are replaced in place by a valid 4 kB placeholder cubin, so the file keeps its layout, the kept
  kernels are byte-identical, and the zeroed space compresses away. Under CUDA's lazy module loading (the
  default since CUDA 12.2; set CUDA_MODULE_LOADING=LAZY to be sure) a dropped module is only looked at when one
  of its kernels is launched, which then fails loudly ("invalid device function"), never silently;
- xz instead of zip's deflate.

    python benchmarks/pack_gpu_site.py --out .device16/site.tar.xz WHEEL...   (needs strip, xz and nvcc here)
On the GPU machine: mkdir -p /tmp/site && tar -xJf site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site
"""
from __future__ import annotations

import argparse
import shutil
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KEEP_DEFAULT = ("selective_scan_fwd_fp32.cu", "selective_scan_fwd_bf16.cu", "selective_scan_bwd_bf16_real.cu",
                "selective_scan_bwd_fp32_real.cu")


def _section(path: Path, name: str) -> tuple[int, int]:
    """(file offset, size) of an ELF section, via readelf."""
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if f" {name} " in line:
            fields = line.split("]", 1)[1].split()
            return int(fields[3], 16), int(fields[4], 16)
    raise ValueError(f"{path}: no {name} section")


def fatbins(data: bytes, off: int, size: int) -> list[tuple[int, int, str]]:
    """(offset, total size, source file) of each fatbin in the .nv_fatbin section."""
    out, pos = [], off
    while pos < off + size:
        magic, _ver, hsz, fsz = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # alignment padding between fatbins
            continue
        ehsz = struct.unpack_from("<I", data, pos + hsz + 4)[0]
        entry = data[pos + hsz: pos + hsz + ehsz]
        source = entry[64:].split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]
        out.append((pos, hsz + fsz, source))
        pos += hsz + fsz
    return out


def placeholder_fatbin(work: Path) -> bytes:
    src = work / "placeholder.cu"
    src.write_text("__global__ void vmr_dropped_module_placeholder(int *x) { if (x) *x = 0; }\n")
    subprocess.run(["nvcc", "-fatbin", "-arch=sm_90", "-o", str(work / "placeholder.fatbin"), str(src)], check=True)
    return (work / "placeholder.fatbin").read_bytes()


def trim_selective_scan(so: Path, keep: tuple[str, ...], work: Path) -> list[str]:
    """Replace the cubins of source files not in `keep` by a placeholder; returns the dropped sources."""
    data = bytearray(so.read_bytes())
    off, size = _section(so, ".nv_fatbin")
    tiny = placeholder_fatbin(work)
    dropped = []
    for pos, total, source in fatbins(bytes(data), off, size):
        if source in keep:
            continue
        if len(tiny) > total:
            raise ValueError(f"placeholder ({len(tiny)} B) larger than {source}'s fatbin ({total} B)")
        data[pos:pos + total] = tiny + bytes(total - len(tiny))
        dropped.append(source)
    so.write_bytes(bytes(data))
    return dropped


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheels", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--keep", default=",".join(KEEP_DEFAULT), help="selective-scan source files whose cubins stay")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        site, work = Path(tmp) / "site", Path(tmp) / "work"
        site.mkdir()
        work.mkdir()
        for whl in args.wheels:  # a wheel is a zip laid out as site-packages; no scripts are needed there
            with zipfile.ZipFile(whl) as z:
                z.extractall(site)
        for so in site.glob("av/**/*.so"):  # PyAV's own modules (not av.libs: those are patchelf'd, leave them)
            subprocess.run(["strip", "--strip-debug", str(so)], check=True)
        for so in site.glob("selective_scan_cuda*.so"):
            subprocess.run(["strip", "--strip-debug", str(so)], check=True)
            dropped = trim_selective_scan(so, tuple(args.keep.split(",")), work)
            (site / "selective_scan_cuda.TRIMMED").write_text("dropped cubins: " + " ".join(dropped) + "\n")
            print("selective_scan_cuda: dropped", ", ".join(dropped))
        for cache in site.rglob("__pycache__"):
            shutil.rmtree(cache)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-cf", str(Path(args.out).resolve()), "-I", "xz -6 -T2", "-C", str(site), "."],
                       check=True)
    print(f"{args.out}: {Path(args.out).stat().st_size / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()
