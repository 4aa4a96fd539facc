"""A burst of large uploads cannot exhaust the front end's memory (fake backend, no engine):
bodies wait for room in the byte budget before they are read, so the peak RSS grows with the
budget, not with the burst. ``python -m benchmarks.load --only uploads`` runs it larger."""

from __future__ import annotations

import argparse
import json

from benchmarks.load import run_uploads


def test_upload_burst_stays_within_a_small_multiple_of_the_budget(tmp_path):
    args = argparse.Namespace(uploads=8, upload_mb=12, buffered_mb=24)
    report = run_uploads(args, tmp_path)
    print(json.dumps(report))
    assert report["statuses"] == {"400": 8}  # each read, decoded, refused as not a video
    assert report["offered_mib"] >= 4 * report["budget_mib"]
    growth = report["front_end_peak_rss_mib"] - report["front_end_baseline_rss_mib"]
    assert growth < 6 * report["budget_mib"], report
