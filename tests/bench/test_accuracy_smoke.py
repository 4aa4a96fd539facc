"""benchmarks/accuracy: the lmms-eval body injector and answer parser, and the plumbing smoke run
against a real earlytom-serve (tiny checkpoint): lmms-eval-shaped frame lists with
frames_as_video on, at ratios 1.0, 0.25 and 0.10."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks package lives at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import lmms_eval_earlytom as inj  # noqa: E402
from benchmarks.accuracy import smoke, smoke_set  # noqa: E402
from earlytom_vllm.core.budget import video_token_budget  # noqa: E402


def test_parse_letter():
    assert smoke.parse_letter("B") == "B"
    assert smoke.parse_letter(" (C) several scenes") == "C"
    assert smoke.parse_letter("Answer: D.") == "D"
    assert smoke.parse_letter("A. one static shot") == "A"
    assert smoke.parse_letter("BAD") is None
    assert smoke.parse_letter("\n\n") is None
    assert smoke.parse_letter(None) is None


def test_smoke_set_is_well_formed():
    data = smoke_set.load_set(smoke_set.DEFAULT_SET)
    assert len(data["items"]) == 6 and len(data["options"]) == 4
    assert len({i["id"] for i in data["items"]}) == 6
    for item in data["items"]:  # every question's video renders
        v = smoke_set.render_video(item["video"], 2, int(data["frame_size"]))
        assert v.shape[:2] == (2, data["frame_size"]), item["id"]
    text = smoke_set.question_text(data, data["items"][0])
    assert text.splitlines()[1].startswith("A.") and text.splitlines()[4].startswith("D.")


def test_injector_adds_the_field_and_lets_the_caller_win():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "B"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    client = openai.OpenAI(base_url="http://test/v1", api_key="k", max_retries=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    msgs = [{"role": "user", "content": "hi"}]
    undo = inj.install_extra_body({"earlytom": inj.earlytom_field(ratio=0.25)})
    try:
        client.chat.completions.create(model="m", messages=msgs, max_tokens=1)
        client.chat.completions.create(model="m", messages=msgs, max_tokens=1,
                                       extra_body={"earlytom": {"retain_ratio": 0.5},
                                                   "ignore_eos": True})
    finally:
        undo()
    client.chat.completions.create(model="m", messages=msgs, max_tokens=1)
    assert bodies[0]["earlytom"] == {"frames_as_video": True, "retain_ratio": 0.25}
    assert bodies[1]["earlytom"] == {"frames_as_video": True, "retain_ratio": 0.5}
    assert bodies[1]["ignore_eos"] is True
    assert "earlytom" not in bodies[2]  # uninstalled
    assert inj.earlytom_field(full=True) == {"frames_as_video": True, "enabled": False}
    assert inj.main(["--ratio", "0.1", "--method", "evs", "--print-field"]) == 0


@pytest.mark.engine
def test_smoke_run(tmp_path, capsys):
    js = tmp_path / "acc.json"
    frames = 4  # the shipped result uses the set's 8; 4 keeps this test well under 90 s
    code = smoke.main(["--json", str(js), "--frames", str(frames), "--max-tokens", "4",
                       "--server-log", str(tmp_path / "serve.log")])
    report = json.loads(js.read_text())
    assert code == 0, json.dumps(report["per_ratio"], indent=1)
    assert report["ratios"] == [1.0, 0.25, 0.10]
    assert report["text_tokens_source"] == "tokenizer"
    per_frame = report["server"]["tokens_per_frame"]
    assert per_frame == 196  # the tiny checkpoint's, from its config
    for ratio in report["ratios"]:
        v = report["per_ratio"][f"{ratio:g}"]
        assert v["answered"] == v["questions"] == 6  # every question answered
        assert 0.0 <= v["accuracy"] <= 1.0
        expected = per_frame * frames + 1 if ratio == 1.0 \
            else video_token_budget(frames, ratio, per_frame) + 1
        assert v["visual_tokens_expected"] == expected
        assert v["budget_ok"]
    for row in report["results"]:
        # the frames went in as ONE video of exactly the budget's tokens
        assert row["prompt_tokens"] == row["text_tokens"] + row["visual_tokens_expected"]
        assert row["frames"] == frames
