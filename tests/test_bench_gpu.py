"""bench/bench_gpu.py runs where CI cannot give it a GPU: its scenarios on tiny CPU models, end to end."""

from __future__ import annotations

import re

import pytest
import torch

from bench.bench_gpu import main


def test_gpu_bench_runs_every_scenario_through_the_queue(tmp_path):
    out = tmp_path / "queue_gpu.md"
    argv = ["--device", "cpu", "--tiny", "--images", "24", "--batch", "8", "--naive-images", "4",
            "--light-rate", "5", "--light-seconds", "1", "--reps", "1", "--decode-workers", "2", "--out", str(out)]
    assert main(argv) == 0
    report = out.read_text(encoding="utf-8")
    # Role rows for each batch size up to --batch, and each queue scenario with its own image count.
    assert [int(b) for b in re.findall(r"^\| (\d+) \| [\d.]+ \|", report, re.M)] == [1, 8]
    assert re.search(r"^\| naive: one image per call, model kept \| 4 \|", report, re.M)
    assert re.search(r"^\| sustained: all at once, max_batch_size 8, 2 decode workers \| 24 \|", report, re.M)
    assert re.search(r"^\| light load: 5 image/s \| 5 \|", report, re.M)
    batches = re.search(r"sustained run's batches: (\d+), mean size ([\d.]+), max (\d+)", report)
    assert batches and int(batches[3]) <= 8 and int(batches[1]) >= 3  # 24 images in batches of at most 8
    assert "peak GPU memory: n/a" in report
    assert "--device cpu --tiny" in report  # the command that produced it


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_bench_refuses_clearly_without_a_gpu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", "/nonexistent/never-written.md"])
    assert exit_info.value.code == 2
    assert "no CUDA GPU here" in capsys.readouterr().err
