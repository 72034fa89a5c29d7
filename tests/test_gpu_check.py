"""bench/gpu_check.py runs end to end with tiny models on the CPU (issue 19): every row
(ViT-B/16-shaped training in three precisions, ResNet, one step of each method's model,
Market-shape evaluation, DDP with one process) runs and reports its numbers, and each
training row computes in the precision it is labelled with (CUDA's autocast emulated on the
CPU: the first GPU run's bf16 and fp16 rows silently ran in fp32). The rows run with the
model on the emulated separate device (core.separate_device), so a host tensor meeting a
device tensor in the check fails here, not in the few minutes of a lent GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--warmup", "0", "--budget-s", "100000", "--emulate-cuda-autocast", "--emulate-separate-device",
                           "--json", str(out),
                           "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "GPU_CHECK_DEBUG": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert sorted(rows) == sorted(["vit fp32", "vit bf16", "vit fp16", "resnet50 bf16", "mgor bf16 step",
                                   "muva bf16 step", "irm bf16 step", "eval market-shape", "eval market-shape on disk",
                                   "ddp 1 process vit bf16"])
    for name, row in rows.items():
        assert "error" not in row, (name, row)
        if name.startswith("eval"):
            assert row["seconds"] > 0
        else:
            assert row["images_per_s"] > 0 and row["step_ms"] > 0
    assert all(rows[f"vit {p}"]["tflops"] > 0 for p in ("fp32", "bf16", "fp16"))  # FLOPs were counted
    assert rows["ddp 1 process vit bf16"]["backend"] == "gloo"
    assert rows["eval market-shape on disk"]["metrics_diff"] < 1e-6  # blocked on disk = in memory
    expected = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    for name, row in rows.items():
        if not name.startswith("eval"):
            precision = next(p for p in expected if p in name.split())
            assert row["compute_dtype"] == expected[precision], (name, row["compute_dtype"])
    assert "MFU" in proc.stdout and "vit bf16" in proc.stdout  # the printed table
    assert "GPU check on cpu (emulated separate device)" in proc.stdout
